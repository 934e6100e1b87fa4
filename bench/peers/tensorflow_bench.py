#!/usr/bin/env python3
"""The reference program (the study note's TensorFlow 1 VGG-16 benchmark) ported to tf.compat.v1, faithfully:
NHWC, Xavier (Glorot uniform) weights, conv biases 0, fc biases 0.1, 'SAME' pools, dropout through a keep_prob
placeholder, forward = argmax(softmax(fc8)) with keep_prob 1.0, forward-backward = tf.gradients(l2_loss(fc8),
params) with keep_prob 0.5. One change: fc8 is linear (the note's ReLU on fc8 is a slip; `vgg bench` fixes it too)."""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf  # noqa: E402

import common  # noqa: E402

v1 = tf.compat.v1


def conv_op(x, name, n_out, p):
    n_in = x.get_shape()[-1]
    with v1.name_scope(name) as scope:
        kernel = v1.get_variable(scope + "w", shape=[3, 3, n_in, n_out], dtype=tf.float32,
                                 initializer=v1.glorot_uniform_initializer())
        biases = tf.Variable(tf.constant(0.0, shape=[n_out], dtype=tf.float32), name="b")
        p += [kernel, biases]
        return tf.nn.relu(tf.nn.bias_add(tf.nn.conv2d(x, kernel, (1, 1, 1, 1), padding="SAME"), biases))


def fc_op(x, name, n_out, p, relu=True):
    n_in = x.get_shape()[-1]
    with v1.name_scope(name) as scope:
        kernel = v1.get_variable(scope + "w", shape=[n_in, n_out], dtype=tf.float32,
                                 initializer=v1.glorot_uniform_initializer())
        biases = tf.Variable(tf.constant(0.1, shape=[n_out], dtype=tf.float32), name="b")
        p += [kernel, biases]
        z = tf.matmul(x, kernel) + biases
        return tf.nn.relu(z) if relu else z


def pool(x):
    return tf.nn.max_pool2d(x, ksize=[1, 2, 2, 1], strides=[1, 2, 2, 1], padding="SAME")


def inference_op(x, keep_prob, model):
    p = []
    block, i = 1, 1
    for v in common.CONFIGS[model]:
        if v == "M":
            x = pool(x)
            block, i = block + 1, 1
        else:
            x = conv_op(x, "conv%d_%d" % (block, i), v, p)
            i += 1
    shp = x.get_shape()
    x = tf.reshape(x, [-1, shp[1] * shp[2] * shp[3]])
    x = v1.nn.dropout(fc_op(x, "fc6", 4096, p), rate=1 - keep_prob)
    x = v1.nn.dropout(fc_op(x, "fc7", 4096, p), rate=1 - keep_prob)
    fc8 = fc_op(x, "fc8", 1000, p, relu=False)
    return tf.argmax(tf.nn.softmax(fc8), 1), fc8, p


def main():
    args = common.parse_args(__doc__)
    if args.batch_norm:
        sys.exit("tensorflow_bench.py ports the reference, which has no BatchNorm")
    v1.disable_eager_execution()
    config = v1.ConfigProto()
    if args.threads:
        config.intra_op_parallelism_threads = args.threads
        config.inter_op_parallelism_threads = 1
    results = {}
    with tf.Graph().as_default():
        v1.set_random_seed(0)
        images = tf.Variable(v1.random_normal([args.batch_size, args.image_size, args.image_size, 3],
                                              dtype=tf.float32, stddev=1e-1))
        keep_prob = v1.placeholder(tf.float32)
        predictions, fc8, p = inference_op(images, keep_prob, args.model)
        grad = tf.gradients(tf.nn.l2_loss(fc8), p)
        sess = v1.Session(config=config)
        sess.run(v1.global_variables_initializer())
        for mode in common.modes(args):
            common.reset_peak_rss()
            if mode == "forward":
                results[mode] = common.time_run(lambda: sess.run(predictions, {keep_prob: 1.0}), "Forward", args)
            else:
                results[mode] = common.time_run(lambda: sess.run(grad, {keep_prob: 0.5}), "Forward-backward", args)
            results[mode]["peak_rss_bytes"] = common.peak_rss_bytes()
    common.write(args, "TensorFlow", tf.__version__, args.threads or None, results)


if __name__ == "__main__":
    main()
