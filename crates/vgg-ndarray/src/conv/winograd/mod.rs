//! Winograd convolution F(4x4, 3x3) and F(6x6, 3x3) for 3x3 stride-1 layers (Lavin & Gray 2015):
//! each 4x4 block of outputs costs 36 multiplications per input-output channel pair instead of
//! 144, each 6x6 block 64 instead of 324 (`TileSize`, chosen per layer and pass: `tile_size`).
//!
//! Per chunk of tile rows, for F(4x4): the input tiles (6x6, overlapping by 2) are transformed,
//! V = Bt d B, into 36 matrices [C, tiles]; the weights were transformed once per call,
//! U = G w Gt, into 36 matrices [K, C]; 36 GEMMs make M = U V [K, tiles]; the output transform
//! Y = At M A writes the 4x4 blocks, with the bias and ReLU applied on the way (F(6x6): 8x8 tiles,
//! 64 matrices, 6x6 blocks). Transforms run on 16 tiles at a time, one per SIMD lane, compiled
//! for AVX-512 or AVX2 where the CPU has them.

use rayon::prelude::*;
use vgg_tensor::{ConvGeometry, ConvPass};

use super::gradient_sum::{self, REDUCTION_LANES};
use crate::arena::{Memory, Pool};
use crate::config::{ConvAlgorithm, Tuning};
use crate::gemm::{product, Mat, MatMut};

mod chunks;
mod few_tiles;
mod layout;
mod simd;
mod store;
mod tiles;
mod transforms;

pub(crate) use chunks::large_chunks;
use chunks::*;
use layout::*;
use store::*;
pub use tiles::TileSize;
use tiles::*;
use transforms::*;

/// Tiles transformed together, one per lane.
const LANES: usize = 16;

/// One SIMD register's worth of tiles.
type Lanes = [f32; LANES];

/// Whether a convolution can run here: 3x3, stride 1, padding at most 2.
pub fn applies(g: &ConvGeometry) -> bool {
    g.kernel_h == 3 && g.kernel_w == 3 && g.stride == 1 && g.padding <= 2
}

/// The tile size `pass` takes on `g` (where `applies`): F(4x4), but with
/// `ConvAlgorithm::WinogradF6` F(6x6) for the forward pass where its products are fewer than
/// F(4x4)'s by a margin (`six_pays`). The gradients keep F(4x4), whose error goals they were met
/// on. F(6x6) is not the default: on an AVX2 Zen 3 it measured level with F(4x4) on VGG-16's
/// conv1 and conv2 and slower on conv3 and conv4, its transforms taking 40-50% more instructions
/// for the same outputs than the GEMMs' 20% they save (docs/performance.md, "Winograd's tile size
/// a parameter").
pub(crate) fn tile_size(g: &ConvGeometry, pass: ConvPass, t: &Tuning) -> TileSize {
    if pass == ConvPass::Forward && t.convolution == ConvAlgorithm::WinogradF6 && six_pays(g) {
        TileSize::Six
    } else {
        TileSize::Four
    }
}

/// Whether F(6x6)'s products (64 per tile, its tiles cropped at the edges) are at most 85% of
/// F(4x4)'s (36 per tile): VGG's conv1 and conv2 (224x224 and 112x112: 82%), not conv3 and conv4
/// (56x56 and 28x28: 91%, where F(6x6) measured slower at batch 8: conv3_2 73-93 against 72-81
/// ms, conv4_2 63-82 against 60-72), nor conv5 (14x14: both grids cover about 16x16, equal
/// products).
fn six_pays(g: &ConvGeometry) -> bool {
    let products = |size: TileSize| {
        let (rows, columns) = size.grid(g);
        rows * columns * size.positions()
    };
    products(TileSize::Six) * 100 <= products(TileSize::Four) * 85
}

/// Whether a layer's transformed weights are worth keeping between calls. Making them writes 4x
/// the weights (memory-bound), while the call's GEMMs do 36 k c multiply-adds per tile: at ~10 GB/s
/// against ~100 GFLOP/s the transform is about 25 / tiles of the layer's time, so it is kept where
/// that passes 5% (under 500 tiles of F(4x4): VGG-16 conv5 up to batch 16, conv4 up to batch 8,
/// every layer at batch 1). Past that it costs little, and keeping it would hold 4x the weights
/// (235 MB for VGG-16's layers on Winograd) for next to nothing. F(6x6)'s are 7x the weights for
/// 1.8x the products per tile: the same bound, on its products.
pub(crate) fn worth_keeping_weights(g: &ConvGeometry, size: TileSize) -> bool {
    const KEEP_BELOW_PRODUCTS: usize = 500 * 36;
    let (tiles_h, tiles_w) = size.grid(g);
    g.batch * tiles_h * tiles_w * size.positions() < KEEP_BELOW_PRODUCTS
}

/// Which convolution's filters a weight transform makes from OIHW weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kernel {
    /// The weights' own convolution: the forward pass.
    AsGiven,
    /// The flipped-kernel convolution (input and output channels swapped, taps reversed) that
    /// gives a stride-1 convolution's input gradient.
    Flipped,
}

/// Output channels of the flipped-kernel convolution whose filters a task flips at once into
/// its own cache-sized buffer (16 x 512 x 9 values for conv4 and conv5, 288 KiB).
const FLIPPED_CHANNELS: usize = 16;

/// U[pos][k][c] = (G f[k][c] Gt)[pos], 16 input channels at a time, for the convolution with k
/// output and c input channels whose filters f `kernel` names on the OIHW 3x3 weights `w` (as
/// given, w is [k][c][3][3]; flipped, [c][k][3][3], read with taps reversed): the weights as
/// `forward_transformed` takes them for tile size `size` (`lasting`: see `Memory::new`).
pub(crate) fn transform_weights(
    w: &[f32],
    kernel: Kernel,
    k: usize,
    c: usize,
    lasting: bool,
    size: TileSize,
) -> Memory {
    assert_eq!(w.len(), k * c * 9, "conv weights length");
    match size {
        TileSize::Four => transform_weights_for::<F4, 4, 6>(w, kernel, k, c, lasting),
        TileSize::Six => transform_weights_for::<F6, 6, 8>(w, kernel, k, c, lasting),
    }
}

fn transform_weights_for<T: Tile<M, A>, const M: usize, const A: usize>(
    w: &[f32],
    kernel: Kernel,
    k: usize,
    c: usize,
    lasting: bool,
) -> Memory {
    // Every (pos, k, c) is written below.
    let mut u = Memory::new(A * A * k * c, lasting);
    let out = OutPtr {
        ptr: u.as_mut_ptr(),
        len: u.len(),
        streaming: false,
    };
    match kernel {
        Kernel::AsGiven => (0..k).into_par_iter().for_each(|ko| {
            simd::filters::<T, M, A>(&w[ko * c * 9..(ko + 1) * c * 9], ko, k, c, out);
        }),
        // A flipped copy of all the weights, written and read back, took 0.5 ms (2 ms cold) of
        // conv4's input gradient at batch 1, beside the transform's 2; flipped a block of
        // output channels at a time, it stays in cache.
        Kernel::Flipped => (0..k.div_ceil(FLIPPED_CHANNELS))
            .into_par_iter()
            .for_each_init(
                || vec![0.0f32; FLIPPED_CHANNELS * c * 9],
                |filters, block| {
                    let first = block * FLIPPED_CHANNELS;
                    let count = FLIPPED_CHANNELS.min(k - first);
                    for ci in 0..c {
                        // Input channel ci's filters for this block: contiguous in `w`.
                        let sources = &w[(ci * k + first) * 9..][..count * 9];
                        for (i, source) in sources.chunks_exact(9).enumerate() {
                            let source: &[f32; 9] = source.try_into().expect("nine taps");
                            let flipped: &mut [f32; 9] = (&mut filters[(i * c + ci) * 9..][..9])
                                .try_into()
                                .expect("nine taps");
                            *flipped = std::array::from_fn(|tap| source[8 - tap]);
                        }
                    }
                    for i in 0..count {
                        let ko = first + i;
                        simd::filters::<T, M, A>(&filters[i * c * 9..][..c * 9], ko, k, c, out);
                    }
                },
            ),
    }
    u
}

/// Panics unless `g` suits Winograd (`applies`) and the input and output (or output gradient,
/// `output`) have its lengths.
fn check_lengths(g: &ConvGeometry, input: &[f32], output: &[f32], what: &str) {
    assert!(applies(g), "Winograd needs a 3x3 stride-1 convolution");
    assert_eq!(
        input.len(),
        g.batch * g.in_channels * g.in_h * g.in_w,
        "conv input length"
    );
    assert_eq!(
        output.len(),
        g.batch * g.out_channels * g.out_h * g.out_w,
        "{what} length"
    );
}

/// y = conv(x, w) (+ bias, ReLU) for a 3x3 stride-1 convolution (`applies`), on tiles of `size`.
#[allow(clippy::too_many_arguments)]
pub fn forward(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    relu: bool,
    g: &ConvGeometry,
    t: &Tuning,
    size: TileSize,
    y: &mut [f32],
) {
    let u = transform_weights(
        w,
        Kernel::AsGiven,
        g.out_channels,
        g.in_channels,
        false,
        size,
    );
    forward_transformed(x, &u, bias, relu, g, t, size, y);
}

/// `forward` with the weights already transformed for `size` (`transform_weights`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward_transformed(
    x: &[f32],
    u: &[f32],
    bias: Option<&[f32]>,
    relu: bool,
    g: &ConvGeometry,
    t: &Tuning,
    size: TileSize,
    y: &mut [f32],
) {
    let layer = Layer {
        x,
        u,
        bias,
        relu,
        g,
        t,
    };
    match size {
        TileSize::Four => forward_on::<F4, 4, 6>(&layer, y),
        TileSize::Six => forward_on::<F6, 6, 8>(&layer, y),
    }
}

/// A forward call's operands (`forward_transformed`).
struct Layer<'a> {
    x: &'a [f32],
    u: &'a [f32],
    bias: Option<&'a [f32]>,
    relu: bool,
    g: &'a ConvGeometry,
    t: &'a Tuning,
}

fn forward_on<T: Tile<M, A>, const M: usize, const A: usize>(layer: &Layer, y: &mut [f32]) {
    let &Layer {
        x,
        u,
        bias,
        relu,
        g,
        t,
    } = layer;
    check_lengths(g, x, y, "conv output");
    let (k, c) = (g.out_channels, g.in_channels);
    assert_eq!(u.len(), A * A * k * c, "transformed weights length");
    let chunks = Chunks::new(g, t, T::SIZE);
    let whole = chunks.total_rows * chunks.tiles_w;
    let out = OutPtr {
        ptr: y.as_mut_ptr(),
        len: y.len(),
        streaming: y.len() * 4 > t.streaming_bytes,
    };
    if split_channels(&chunks, t) {
        return forward_by_channels::<T, M, A>(layer, &chunks, out);
    }
    (0..chunks.count).into_par_iter().for_each(|chunk| {
        chunks.with_scratch(chunk, |rows, tiles, v, mm| {
            simd::input::<T, M, A>(x, g, rows.clone(), v);
            position_products(u, v, mm, 0..k, (k, c), (tiles, A * A), whole, t);
            simd::output::<T, M, A>(mm, g, rows, 0..k, bias, relu, out);
            crate::simd::store_fence();
        })
    });
}

/// Whether the threads share the tiles and split the output channels instead
/// (`forward_by_channels`): where the whole call has few tiles (VGG-16's conv4 at batch 1: 49), splitting the tiles leaves
/// each thread 21-28 of them for every transformed weight it streams from memory. At batch 2 (98
/// tiles) the split measured slower (conv4_2 13.6-14.8 -> 17.1-17.7 ms): docs/performance.md.
fn split_channels(chunks: &Chunks, t: &Tuning) -> bool {
    const MAX_TILES: usize = 4 * LANES;
    t.threads > 1 && chunks.total_rows * chunks.tiles_w <= MAX_TILES
}

/// `forward_on` with every thread on all the tiles and its own share of the output channels: the
/// input is transformed once, and each thread reads only its channels' transformed weights (at
/// batch 1, conv4's 36 MiB are read once in all instead of once per thread).
fn forward_by_channels<T: Tile<M, A>, const M: usize, const A: usize>(
    layer: &Layer,
    chunks: &Chunks,
    out: OutPtr,
) {
    let &Layer {
        x,
        u,
        bias,
        relu,
        g,
        t,
    } = layer;
    let (k, c) = (g.out_channels, g.in_channels);
    let positions = A * A;
    let rows = 0..chunks.total_rows;
    let tiles = rows.len() * chunks.tiles_w;
    // Both written whole below (the input transform; the products).
    let mut v = Memory::uninit(positions * c * tiles);
    // The threads share the input transform too, by input channels (on one thread it took
    // conv4_2 at batch 1 1.7 ms of 8.5).
    let per_channel = positions * tiles;
    by_channel_blocks(&mut v, per_channel, c.div_ceil(t.threads), |channels, v| {
        simd::input_channels::<T, M, A>(x, g, rows.clone(), channels, v)
    });
    let mut m = Memory::uninit(positions * k * tiles);
    by_channel_blocks(&mut m, per_channel, k.div_ceil(t.threads), |channels, m| {
        let shape = (tiles, positions);
        position_products(u, &v, m, channels.clone(), (k, c), shape, tiles, t);
        // Each share writes only its own channels' planes.
        simd::output::<T, M, A>(m, g, rows.clone(), channels, bias, relu, out);
        crate::simd::store_fence();
    });
}

/// The products' tuning: f32 in either math mode. Rounding the transformed values to bf16 loses
/// 10x the direct method's digits (`conv::use_winograd`), so the bf16 mode takes Winograd only
/// where f32 Winograd outruns its unit (`Bf16Unit::outruns_winograd`), and then in f32.
fn f32_products(t: &Tuning) -> Tuning {
    Tuning { bf16: None, ..*t }
}

/// M[pos] = U[pos] V[pos] for the output channels `channels` (m holds their rows only), one
/// thread's GEMM per position (`positions` of them, for `tiles` tiles), or where the call has few
/// tiles in all (`whole`), the products that hold them in registers (`few_tiles`).
#[allow(clippy::too_many_arguments)]
fn position_products(
    u: &[f32],
    v: &[f32],
    m: &mut [f32],
    channels: std::ops::Range<usize>,
    (k, c): (usize, usize),
    (tiles, positions): (usize, usize),
    whole: usize,
    t: &Tuning,
) {
    if few_tiles::applies(whole, t) {
        let held = few_tiles::vectors_held(t);
        let shape = (tiles, positions);
        return few_tiles::products(u, v, m, channels, (k, c), shape, held);
    }
    let rows = channels.len();
    let t = &f32_products(t);
    for pos in 0..positions {
        let at = (pos * k + channels.start) * c;
        product(
            MatMut {
                data: m,
                offset: pos * tiles,
                rows,
                cols: tiles,
                row_stride: positions * tiles,
            },
            Mat::row_major(&u[at..at + rows * c], rows, c),
            position(v, (pos, positions), c, tiles),
            false,
            1,
            t,
        );
    }
}

/// dW for a 3x3 stride-1 convolution (`applies`), on F(4x4) (`tile_size`): per chunk,
/// `dU[pos] += dM[pos] V[pos]^T` with dM = A dY At and V = Bt x B as in the forward pass; then
/// dW = Gt dU G. Each thread sums its own chunks (a fixed split, so the result does not depend on
/// scheduling).
pub(crate) fn backward_weight(x: &[f32], dy: &[f32], g: &ConvGeometry, t: &Tuning) -> Memory {
    backward_weight_on::<F4, 4, 6>(x, dy, g, t)
}

fn backward_weight_on<T: Backward<M, A>, const M: usize, const A: usize>(
    x: &[f32],
    dy: &[f32],
    g: &ConvGeometry,
    t: &Tuning,
) -> Memory {
    check_lengths(g, x, dy, "conv output-gradient");
    if weight_grad_has_few_tiles(g, T::SIZE) {
        return backward_weight_few_tiles::<T, M, A>(x, dy, g, t);
    }
    let (k, c) = (g.out_channels, g.in_channels);
    let positions = A * A;
    // Chunks and lanes fixed by the geometry, not the thread count, so neither is the sum
    // (gradient_sum.rs): the chunks are cut as for as many threads as lanes.
    let fixed = Tuning {
        threads: REDUCTION_LANES,
        ..*t
    };
    let chunks = Chunks::new(g, &fixed, T::SIZE);
    // ConvGeometry rejects empty inputs, so there is at least one chunk, and every lane gets one.
    assert!(chunks.count > 0, "a convolution has at least one tile");
    let lanes = gradient_sum::lanes(chunks.count);
    let gemm_threads = gradient_sum::gemm_threads(t.threads, lanes);
    let t = &f32_products(t);
    let partials: Vec<Memory> = (0..lanes)
        .into_par_iter()
        .map(|lane| {
            // Each lane has at least one chunk (lanes <= chunks), whose GEMMs (accumulate false)
            // overwrite all of it.
            let mut du = Memory::uninit(positions * k * c);
            let mine = gradient_sum::lane_parts(lane, lanes, chunks.count);
            for (i, chunk) in mine.enumerate() {
                chunks.with_scratch(chunk, |rows, tiles, v, dm| {
                    simd::input::<T, M, A>(x, g, rows.clone(), v);
                    simd::output_grad::<T, M, A>(dy, g, rows, dm);
                    for pos in 0..positions {
                        product(
                            MatMut {
                                data: &mut du[pos * k * c..(pos + 1) * k * c],
                                offset: 0,
                                rows: k,
                                cols: c,
                                row_stride: c,
                            },
                            position(dm, (pos, positions), k, tiles),
                            position(v, (pos, positions), c, tiles).t(),
                            i > 0,
                            gemm_threads,
                            t,
                        );
                    }
                });
            }
            du
        })
        .collect();
    let mut partials = partials.into_iter();
    let mut du = partials.next().expect("at least one worker");
    for p in partials {
        du.par_chunks_mut(1 << 15)
            .zip(p.par_chunks(1 << 15))
            .for_each(|(a, b)| a.iter_mut().zip(b).for_each(|(a, b)| *a += b));
    }
    // dW[k][c] = Gt dU[k][c] G, 16 input channels at a time (every value written).
    let mut dw = Memory::uninit_in(k * c * 9, Pool::Gradients);
    dw.par_chunks_mut(c * 9).enumerate().for_each(|(ko, dw_k)| {
        simd::weight_grad::<T, M, A>(&du, ko, k, c, dw_k);
    });
    dw
}

/// Tiles up to which a weight gradient is summed whole, per block of output channels
/// (`backward_weight_few_tiles`): each value's sum runs over at most 256 tiles (4096 pixels, as
/// `gradient_sum::PIXELS_PER_PART`).
const FEW_TILES: usize = 256;

/// Whether the weight gradient of `g` on tiles of `size` has few enough tiles to be summed whole
/// (`backward_weight_few_tiles`).
pub(crate) fn weight_grad_has_few_tiles(g: &ConvGeometry, size: TileSize) -> bool {
    let (tiles_h, tiles_w) = size.grid(g);
    g.batch * tiles_h * tiles_w <= FEW_TILES
}

/// `f(channels, values)` in parallel for each block of `per_block` channels of `data`, which
/// holds `per_channel` values a channel.
fn by_channel_blocks(
    data: &mut [f32],
    per_channel: usize,
    per_block: usize,
    f: impl Fn(std::ops::Range<usize>, &mut [f32]) + Sync,
) {
    data.par_chunks_mut(per_block * per_channel)
        .enumerate()
        .for_each(|(block, values)| {
            let first = block * per_block;
            f(first..first + values.len() / per_channel, values)
        });
}

/// The weight gradient where the tiles are few (conv4 and conv5 at batch 1: 49 and 16): every
/// tile transformed first (V and dM, 36 (c + k) values a tile), then per block of output
/// channels, dU = dM V^T summed over all the tiles at once and transformed straight into dW's
/// rows. Cut by tiles as the large path is, each of the two lanes wrote a whole dU (36 k c
/// values: 38 MB for conv4), and the two were added and read again for the transform (conv4 at
/// batch 1: 9.6-9.9 ms, now 8.0-8.5; conv5 at batch 8, which took im2col: 31.7-33.3, now
/// 18.2-18.6). Each value is one GEMM's sum over the tiles, cut by the geometry alone, so it
/// does not depend on the thread count.
fn backward_weight_few_tiles<T: Backward<M, A>, const M: usize, const A: usize>(
    x: &[f32],
    dy: &[f32],
    g: &ConvGeometry,
    t: &Tuning,
) -> Memory {
    let (k, c) = (g.out_channels, g.in_channels);
    let positions = A * A;
    let (tiles_h, tiles_w) = T::SIZE.grid(g);
    let rows = 0..g.batch * tiles_h;
    let tiles = rows.len() * tiles_w;
    let mut scratch = Memory::uninit(positions * (c + k) * tiles);
    let (v, dm) = scratch.split_at_mut(positions * c * tiles);
    let per_channel = positions * tiles;
    rayon::join(
        || {
            by_channel_blocks(v, per_channel, LANES, |channels, v| {
                simd::input_channels::<T, M, A>(x, g, rows.clone(), channels, v)
            })
        },
        || {
            by_channel_blocks(dm, per_channel, LANES, |channels, dm| {
                simd::output_grad_channels::<T, M, A>(dy, g, rows.clone(), channels, dm)
            })
        },
    );
    let (v, dm) = (&*v, &*dm);
    let t = &f32_products(t);
    // As many blocks as lanes, from the geometry alone: larger blocks measured faster (the
    // GEMMs' shared operand V packed fewer times; conv4 at batch 1: 8.5-8.7 ms in blocks of 128
    // channels, 7.4-7.6 in two of 256, 9.7-10.3 in blocks of 64).
    let block = k.div_ceil(REDUCTION_LANES).next_multiple_of(LANES);
    let gemm_threads = gradient_sum::gemm_threads(t.threads, k.div_ceil(block));
    let mut dw = Memory::uninit_in(k * c * 9, Pool::Gradients);
    dw.par_chunks_mut(block * c * 9)
        .enumerate()
        .for_each(|(index, dw_block)| {
            let first = index * block;
            let kb = dw_block.len() / (c * 9);
            let mut du = Memory::uninit(positions * kb * c);
            for pos in 0..positions {
                let mut lhs = position(dm, (pos, positions), k, tiles);
                lhs.offset += first * lhs.row_stride;
                lhs.rows = kb;
                product(
                    MatMut {
                        data: &mut du[pos * kb * c..(pos + 1) * kb * c],
                        offset: 0,
                        rows: kb,
                        cols: c,
                        row_stride: c,
                    },
                    lhs,
                    position(v, (pos, positions), c, tiles).t(),
                    false,
                    gemm_threads,
                    t,
                );
            }
            for (ko, dw_k) in dw_block.chunks_exact_mut(c * 9).enumerate() {
                simd::weight_grad::<T, M, A>(&du, ko, kb, c, dw_k);
            }
        });
    dw
}

#[cfg(test)]
mod tests {
    use super::*;
    use vgg_tensor::{random, Conv2dParams, Shape};

    /// Direct convolution in f64, plus bias and optional ReLU.
    /// Output (n, k, oh, ow) of the convolution, in f64.
    #[allow(clippy::too_many_arguments)]
    fn direct_at(
        x: &[f32],
        w: &[f32],
        b: &[f32],
        relu: bool,
        g: &ConvGeometry,
        [n, k, oh, ow]: [usize; 4],
    ) -> f64 {
        let mut acc = b[k] as f64;
        for c in 0..g.in_channels {
            for ky in 0..3 {
                let ih = (oh + ky) as isize - g.padding as isize;
                if ih < 0 || ih >= g.in_h as isize {
                    continue;
                }
                for kx in 0..3 {
                    let iw = (ow + kx) as isize - g.padding as isize;
                    if iw < 0 || iw >= g.in_w as isize {
                        continue;
                    }
                    let xv =
                        x[((n * g.in_channels + c) * g.in_h + ih as usize) * g.in_w + iw as usize];
                    let wv = w[((k * g.in_channels + c) * 3 + ky) * 3 + kx];
                    acc += xv as f64 * wv as f64;
                }
            }
        }
        if relu {
            acc.max(0.0)
        } else {
            acc
        }
    }

    fn direct(x: &[f32], w: &[f32], b: &[f32], relu: bool, g: &ConvGeometry) -> Vec<f64> {
        let (k, h, w_out) = (g.out_channels, g.out_h, g.out_w);
        (0..g.batch * k * h * w_out)
            .map(|i| {
                let at = [
                    i / (k * h * w_out),
                    i / (h * w_out) % k,
                    i / w_out % h,
                    i % w_out,
                ];
                direct_at(x, w, b, relu, g, at)
            })
            .collect()
    }

    /// Transformed weights are kept where making them is a large share of a call: small batches
    /// and the small images of the last layers.
    #[test]
    fn transformed_weights_are_kept_for_small_calls_only() {
        let kept = |batch: usize, channels: usize, side: usize| {
            let g = ConvGeometry::new(
                &Shape::from([batch, channels, side, side]),
                &Shape::from([channels, channels, 3, 3]),
                Conv2dParams {
                    stride: 1,
                    padding: 1,
                },
            )
            .unwrap();
            worth_keeping_weights(&g, TileSize::Four)
        };
        // VGG-16's conv5 (14x14: 16 tiles per image), conv4 (28x28: 49), conv3 (56x56: 196).
        assert!(kept(1, 512, 14) && kept(16, 512, 14) && !kept(32, 512, 14));
        assert!(kept(8, 512, 28) && !kept(16, 512, 28));
        assert!(kept(1, 256, 56) && !kept(8, 256, 56));
    }

    /// F(6x6) only where asked for (`ConvAlgorithm::WinogradF6`), for the forward pass, on
    /// VGG-16's conv1 and conv2 images (18% fewer products), not conv3-conv5's (9%, or none).
    #[test]
    fn six_by_six_tiles_only_where_asked_and_paying() {
        let six = Tuning {
            convolution: ConvAlgorithm::WinogradF6,
            ..Tuning::detect(2)
        };
        let auto = Tuning::detect(2);
        for (side, pays) in [
            (224, true),
            (112, true),
            (56, false),
            (28, false),
            (14, false),
        ] {
            let g = ConvGeometry::new(
                &Shape::from([2, 64, side, side]),
                &Shape::from([64, 64, 3, 3]),
                Conv2dParams {
                    stride: 1,
                    padding: 1,
                },
            )
            .unwrap();
            let forward = tile_size(&g, ConvPass::Forward, &six);
            assert_eq!(forward == TileSize::Six, pays, "{side}x{side}");
            assert_eq!(tile_size(&g, ConvPass::Forward, &auto), TileSize::Four);
            for pass in [ConvPass::InputGradient, ConvPass::WeightGradient] {
                assert_eq!(tile_size(&g, pass, &six), TileSize::Four, "{pass:?}");
            }
        }
    }

    /// The threads split the output channels where a call has few tiles (conv4 at batch 1), and
    /// the tiles elsewhere or on one thread.
    #[test]
    fn channels_are_split_where_tiles_are_few() {
        let splits = |batch: usize, side: usize, threads: usize| {
            let g = ConvGeometry::new(
                &Shape::from([batch, 512, side, side]),
                &Shape::from([512, 512, 3, 3]),
                Conv2dParams {
                    stride: 1,
                    padding: 1,
                },
            )
            .unwrap();
            let t = Tuning::detect(threads);
            split_channels(&Chunks::new(&g, &t, TileSize::Four), &t)
        };
        assert!(splits(1, 28, 2) && splits(1, 28, 4));
        assert!(!splits(2, 28, 2) && !splits(1, 56, 2) && !splits(1, 28, 1));
    }

    /// An output beyond `Tuning::streaming_bytes` takes the non-temporal stores: every value is
    /// written and right (sampled against the definition).
    #[test]
    fn large_outputs_are_streamed_correctly() {
        let dims = [1, 16, 512, 576];
        let g = ConvGeometry::new(
            &Shape::from(dims),
            &Shape::from([16, 16, 3, 3]),
            Conv2dParams {
                stride: 1,
                padding: 1,
            },
        )
        .unwrap();
        let mut x = vec![0.0; 16 * 512 * 576];
        random::fill_normal(&mut x, 1, 0, 0.0, 1.0);
        let mut wt = vec![0.0; 16 * 16 * 9];
        random::fill_normal(&mut wt, 2, 0, 0.0, 0.1);
        let b = vec![0.05; 16];
        let mut y = vec![f32::NAN; 16 * 512 * 576];
        let t = Tuning {
            streaming_bytes: 16 << 20,
            ..Tuning::detect(2)
        };
        assert!(y.len() * 4 > t.streaming_bytes);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        for size in [TileSize::Four, TileSize::Six] {
            y.fill(f32::NAN);
            pool.install(|| forward(&x, &wt, Some(&b), true, &g, &t, size, &mut y));
            assert!(y.iter().all(|v| v.is_finite()), "every output is written");
            for i in (0..y.len()).step_by(997) {
                let at = [0, i / (512 * 576), i / 576 % 512, i % 576];
                let want = direct_at(&x, &wt, &b, true, &g, at);
                assert!(
                    (y[i] as f64 - want).abs() <= 1e-4 * want.abs().max(1.0),
                    "{size:?} {at:?}: got {}, want {want}",
                    y[i]
                );
            }
        }
    }

    /// Max |winograd - direct| over max |direct|, on tiles of `size`.
    fn relative_error(
        dims: [usize; 4],
        k: usize,
        (padding, relu): (usize, bool),
        threads: usize,
        size: TileSize,
    ) -> f64 {
        let t = Tuning::detect(threads);
        forward_against_direct(dims, k, (padding, relu), &t, size).0
    }

    /// The forward pass on tuning `t` (its thread count) and tiles of `size` of a seeded input,
    /// weights and bias: its max |winograd - direct| over max |direct|, and its output.
    fn forward_against_direct(
        dims: [usize; 4],
        k: usize,
        (padding, relu): (usize, bool),
        t: &Tuning,
        size: TileSize,
    ) -> (f64, Vec<f32>) {
        let [n, c, h, w] = dims;
        let g = ConvGeometry::new(
            &Shape::from(dims),
            &Shape::from([k, c, 3, 3]),
            Conv2dParams { stride: 1, padding },
        )
        .unwrap();
        let mut x = vec![0.0; n * c * h * w];
        random::fill_normal(&mut x, 1, 0, 0.0, 1.0);
        let mut wt = vec![0.0; k * c * 9];
        random::fill_normal(&mut wt, 2, 0, 0.0, (2.0 / (9.0 * c as f32)).sqrt());
        let mut b = vec![0.0; k];
        random::fill_normal(&mut b, 3, 0, 0.0, 0.1);
        let mut y = vec![f32::NAN; g.batch * k * g.out_h * g.out_w];
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(t.threads)
            .build()
            .unwrap();
        pool.install(|| forward(&x, &wt, Some(&b), relu, &g, t, size, &mut y));
        let want = direct(&x, &wt, &b, relu, &g);
        let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let worst = y
            .iter()
            .zip(&want)
            .map(|(&got, &want)| (got as f64 - want).abs())
            .fold(0.0f64, |m, d| {
                if d.is_nan() || m.is_nan() {
                    f64::NAN
                } else {
                    m.max(d)
                }
            });
        (worst / scale, y)
    }

    /// Calls with at most 64 tiles take the few-tile products where our kernels are AVX-512's or
    /// AVX2's (`few_tiles`; both blockings forced here, so that every machine runs them, compiled
    /// for its widest unit): against the direct method in f64 for 1 to 4 vectors of tiles, full
    /// and part vectors, output channels off its 6-row blocks, the threads' shares of channels;
    /// and the same values to the bit for either blocking on 1, 2 and 3 threads (each sum is in
    /// one order whatever the split).
    #[test]
    fn few_tile_products_match_direct_convolution() {
        for (dims, k, tiles) in [
            ([1, 512, 14, 14], 512, 16),
            ([1, 20, 4, 4], 7, 1),
            ([2, 33, 12, 6], 13, 12),
            ([2, 16, 16, 16], 23, 32),
            ([3, 24, 14, 14], 25, 48),
            ([1, 40, 28, 28], 64, 49),
            // One tile past whole vectors, summed beside them where c is a multiple of 16.
            ([1, 48, 28, 28], 13, 49),
            ([1, 32, 44, 12], 7, 33),
            ([1, 16, 4, 68], 8, 17),
            // Not there: c off 16, or more than one tile past.
            ([1, 20, 4, 68], 8, 17),
            ([1, 64, 36, 8], 9, 18),
            ([1, 16, 12, 20], 6, 15),
            ([4, 17, 14, 14], 6, 64),
        ] {
            let g = ConvGeometry::new(
                &Shape::from(dims),
                &Shape::from([k, dims[1], 3, 3]),
                Conv2dParams {
                    stride: 1,
                    padding: 1,
                },
            )
            .unwrap();
            let (tiles_h, tiles_w) = TileSize::Four.grid(&g);
            assert_eq!(g.batch * tiles_h * tiles_w, tiles, "{dims:?}");
            // The GEMM crate's sums, for comparison: the same on any thread count.
            let gemm = Tuning {
                kernel_isa: crate::config::Isa::Portable,
                ..Tuning::detect(1)
            };
            let four = TileSize::Four;
            let (gemm_err, _) = forward_against_direct(dims, k, (1, false), &gemm, four);
            let mut first = None;
            // AVX-512's blocking (every tile in registers) and AVX2's (a vector of tiles at a
            // time), each compiled for this machine's widest unit.
            for isa in [crate::config::Isa::Avx512, crate::config::Isa::Avx2] {
                for threads in [1, 2, 3] {
                    let t = Tuning {
                        kernel_isa: isa,
                        ..Tuning::detect(threads)
                    };
                    assert!(few_tiles::applies(tiles, &t));
                    let (err, y) = forward_against_direct(dims, k, (1, false), &t, four);
                    eprintln!("{dims:?} k {k} {isa:?}: few tiles {err:.2e} gemm {gemm_err:.2e}");
                    // The bound of `stays_within_1e_4_of_direct_on_vgg_channel_counts`; and no
                    // worse than the GEMM's sums (the same to the bit on the shapes measured).
                    assert!(
                        err < 1e-4 && err <= 1.5 * gemm_err.max(1e-7),
                        "{dims:?} k {k}: relative error {err:e} (the GEMM's: {gemm_err:e})"
                    );
                    let bits: Vec<u32> = y.iter().map(|v| v.to_bits()).collect();
                    match &first {
                        None => first = Some(bits),
                        Some(first) => assert!(
                            *first == bits,
                            "{dims:?} k {k}: {isa:?} on {threads} threads gives other values"
                        ),
                    }
                }
            }
        }
        // More tiles, or the portable build of our kernels, take the GEMM.
        let t = Tuning::detect(1);
        assert!(!few_tiles::applies(
            16,
            &Tuning {
                kernel_isa: crate::config::Isa::Portable,
                ..t
            }
        ));
        for isa in [crate::config::Isa::Avx512, crate::config::Isa::Avx2] {
            let t = Tuning {
                kernel_isa: isa,
                ..t
            };
            assert!(!few_tiles::applies(few_tiles::MAX_TILES + 1, &t));
        }
    }

    /// Odd sizes, partial tiles, every padding, channel counts off the lane width, one and two
    /// threads (chunks split differently), both tile sizes.
    #[test]
    fn matches_direct_convolution_on_awkward_shapes() {
        for (dims, k, padding, relu) in [
            ([1, 1, 3, 3], 1, 0, false),
            ([2, 3, 9, 11], 5, 1, true),
            ([3, 17, 5, 7], 20, 1, false),
            ([1, 16, 4, 4], 16, 2, true),
            ([2, 33, 13, 6], 7, 0, false),
            ([1, 8, 70, 9], 3, 1, true),
        ] {
            for (threads, size) in [1, 2]
                .into_iter()
                .flat_map(|n| [(n, TileSize::Four), (n, TileSize::Six)])
            {
                let err = relative_error(dims, k, (padding, relu), threads, size);
                assert!(
                    err < 1e-5,
                    "{dims:?} k {k} pad {padding} {size:?}: relative error {err:e}"
                );
            }
        }
    }

    /// dW in f64 by the definition: dW[k][c][ky][kx] = sum over n, oh, ow of dy * x.
    fn direct_weight_grad(x: &[f32], dy: &[f32], g: &ConvGeometry) -> Vec<f64> {
        let mut dw = vec![0.0f64; g.out_channels * g.in_channels * 9];
        for n in 0..g.batch {
            for k in 0..g.out_channels {
                for c in 0..g.in_channels {
                    for ky in 0..3 {
                        for kx in 0..3 {
                            let mut acc = 0.0f64;
                            for oh in 0..g.out_h {
                                let ih = (oh + ky) as isize - g.padding as isize;
                                if ih < 0 || ih >= g.in_h as isize {
                                    continue;
                                }
                                for ow in 0..g.out_w {
                                    let iw = (ow + kx) as isize - g.padding as isize;
                                    if iw < 0 || iw >= g.in_w as isize {
                                        continue;
                                    }
                                    acc += dy
                                        [((n * g.out_channels + k) * g.out_h + oh) * g.out_w + ow]
                                        as f64
                                        * x[((n * g.in_channels + c) * g.in_h + ih as usize)
                                            * g.in_w
                                            + iw as usize]
                                            as f64;
                                }
                            }
                            dw[((k * g.in_channels + c) * 3 + ky) * 3 + kx] += acc;
                        }
                    }
                }
            }
        }
        dw
    }

    fn weight_grad_error(dims: [usize; 4], k: usize, padding: usize, threads: usize) -> f64 {
        let [n, c, h, w] = dims;
        let g = ConvGeometry::new(
            &Shape::from(dims),
            &Shape::from([k, c, 3, 3]),
            Conv2dParams { stride: 1, padding },
        )
        .unwrap();
        let mut x = vec![0.0; n * c * h * w];
        random::fill_normal(&mut x, 4, 0, 0.0, 1.0);
        let mut dy = vec![0.0; g.batch * k * g.out_h * g.out_w];
        random::fill_normal(&mut dy, 5, 0, 0.0, 1.0);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let got = pool.install(|| backward_weight(&x, &dy, &g, &Tuning::detect(threads)));
        let want = direct_weight_grad(&x, &dy, &g);
        let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        got.iter()
            .zip(&want)
            .map(|(&a, &b)| (a as f64 - b).abs())
            .fold(0.0f64, |m, d| {
                if d.is_nan() || m.is_nan() {
                    f64::NAN
                } else {
                    m.max(d)
                }
            })
            / scale
    }

    #[test]
    fn weight_gradient_matches_the_definition() {
        for (dims, k, padding) in [
            ([1, 1, 3, 3], 1, 0),
            ([2, 3, 9, 11], 5, 1),
            ([3, 17, 5, 7], 20, 1),
            ([1, 16, 4, 4], 16, 2),
            ([2, 33, 13, 6], 7, 0),
            ([2, 64, 28, 28], 64, 1),
            ([1, 256, 14, 14], 256, 1),
            // Long sums: 25,088 outputs per weight.
            ([2, 16, 112, 112], 16, 1),
        ] {
            for threads in [1, 2] {
                let err = weight_grad_error(dims, k, padding, threads);
                eprintln!(
                    "{dims:?} k {k} pad {padding} threads {threads}: relative error {err:.2e}"
                );
                assert!(
                    err < 1e-4,
                    "{dims:?} k {k} pad {padding}: relative error {err:e}"
                );
            }
        }
    }

    /// VGG-16's channel counts (spatial sizes reduced), where the error would grow with the
    /// accumulation length: within 1e-4 of the direct method, relative to the output's scale, on
    /// either tile size; and F(6x6) within 4x F(4x4)'s error (about 2x measured:
    /// scripts/winograd_error.py).
    #[test]
    fn stays_within_1e_4_of_direct_on_vgg_channel_counts() {
        for (c, k, side) in [
            (64, 64, 32),
            (64, 128, 24),
            (128, 256, 16),
            (256, 512, 14),
            (512, 512, 14),
        ] {
            let dims = [1, c, side, side];
            let four = relative_error(dims, k, (1, true), 2, TileSize::Four);
            let six = relative_error(dims, k, (1, true), 2, TileSize::Six);
            eprintln!(
                "{c}->{k} at {side}x{side}: relative error F(4x4) {four:.2e}, F(6x6) {six:.2e}"
            );
            assert!(
                four < 1e-4 && six < 1e-4 && six < 4.0 * four,
                "{c}->{k} at {side}x{side}: relative error F(4x4) {four:e}, F(6x6) {six:e}"
            );
        }
    }
}
