//! Stride-1 convolutions on AMX without a column matrix. The input is packed once per call as
//! pixels of bf16 channel pairs ([padded row][padded column][channel pair], zero borders), so
//! that for every tap of the kernel, 16 consecutive output pixels' inputs are 16 rows of memory
//! a fixed stride apart: a tile the unit loads directly. Output pixels are numbered across the
//! padded width (the columns past the output's edge are computed and dropped: 2 of 16 at
//! 14x14, under 1% at 224x224), so every tile is 16 consecutive numbers.
//!
//! im2col instead writes each input value 9 times in f32 and packs it again: with AMX's
//! products 12x faster than the f32 units', that copying, not the arithmetic, took the time
//! (VGG-16's conv1_2 at batch 8: the products 5% of it).

use rayon::prelude::*;
use vgg_tensor::ConvGeometry;

use super::amx::{load_sums, step, store_sums, with_tiles, zero_sums, TILE, TILE_K, TILE_WORDS};
use super::{bits, interleave};
use crate::arena::Memory;
use crate::conv::store_epilogue;

/// Channels in one tile's row (32 bf16: 64 bytes).
const CHANNELS: usize = TILE_K;

/// Whether `direct::forward` takes this convolution: stride 1, and enough input channels that
/// padding them to 32 wastes little (conv1_1's 3 stay with im2col: direct, its forward took 27.7
/// against 19.4 ms at batch 8, its weight gradient 45.8 against 28.1).
pub fn applies(g: &ConvGeometry) -> bool {
    g.stride == 1 && g.in_channels >= 16 && g.batch > 0
}

/// The sizes the packing and the products share.
struct Layout {
    taps: usize,
    kernel_w: usize,
    channel_blocks: usize,
    /// 16-output-channel tiles, padded to a whole number of pairs.
    out_tiles: usize,
    padded_w: usize,
    /// Pixels in one packed image, enough for every tile's reads.
    pixels: usize,
    /// Output pixels numbered across the padded width, in blocks of 32.
    blocks: usize,
}

impl Layout {
    fn of(g: &ConvGeometry) -> Layout {
        let padded_w = g.in_w + 2 * g.padding;
        let padded_h = g.in_h + 2 * g.padding;
        let numbered = (g.out_h - 1) * padded_w + g.out_w;
        let blocks = numbered.div_ceil(2 * TILE);
        let reach = (g.kernel_h - 1) * padded_w + (g.kernel_w - 1);
        Layout {
            taps: g.kernel_h * g.kernel_w,
            kernel_w: g.kernel_w,
            channel_blocks: g.in_channels.div_ceil(CHANNELS),
            out_tiles: 2 * g.out_channels.div_ceil(2 * TILE),
            padded_w,
            pixels: (padded_h * padded_w).max(blocks * 2 * TILE + reach),
            blocks,
        }
    }

    /// 32-bit words per packed pixel.
    fn pixel_words(&self) -> usize {
        self.channel_blocks * TILE
    }
}

/// f32 words of `pack_weights` for `g`.
pub fn packed_weights_len(g: &ConvGeometry) -> usize {
    let l = Layout::of(g);
    l.out_tiles * l.taps * l.channel_blocks * TILE_WORDS
}

/// OIHW weights as tiles: [16 output channels][tap][32 input channels][channel pair][output
/// channel], each word two input channels of one output channel; zeros past the edges.
pub(crate) fn pack_weights(w: &[f32], g: &ConvGeometry, lasting: bool) -> Memory {
    let l = Layout::of(g);
    let (k, c) = (g.out_channels, g.in_channels);
    assert_eq!(w.len(), k * c * l.taps, "conv weights length");
    let mut packed = Memory::new(packed_weights_len(g), lasting);
    packed
        .par_chunks_mut(l.taps * l.channel_blocks * TILE_WORDS)
        .enumerate()
        .for_each(|(out_tile, words)| {
            for (t, tile) in words.chunks_exact_mut(TILE_WORDS).enumerate() {
                let (tap, block) = (t / l.channel_blocks, t % l.channel_blocks);
                for (i, word) in tile.iter_mut().enumerate() {
                    let (pair, lane) = (i / TILE, i % TILE);
                    let o = out_tile * TILE + lane;
                    let at = |ci: usize| {
                        if o < k && ci < c {
                            bits(w[(o * c + ci) * l.taps + tap])
                        } else {
                            0
                        }
                    };
                    let ci = block * CHANNELS + 2 * pair;
                    *word = f32::from_bits(at(ci) | at(ci + 1) << 16);
                }
            }
        });
    packed
}

/// One image as pixels of channel pairs (see the module's note), zero borders and tail. Row by
/// row: each row's channel pairs are interleaved first, then written pixel-major, so that the
/// transposition's scattered writes stay within one row's words (in L1).
fn pack_image(x: &[f32], g: &ConvGeometry, l: &Layout, out: &mut [u32]) {
    out.fill(0);
    let (h, w, p) = (g.in_h, g.in_w, g.padding);
    let plane = h * w;
    let stride = l.pixel_words();
    let pairs = g.in_channels.div_ceil(2);
    let mut by_pair = vec![0u32; pairs * w];
    for row in 0..h {
        let channel_row = |ci: usize| &x[ci * plane + row * w..][..w];
        for (pair, words) in by_pair.chunks_exact_mut(w).enumerate() {
            let high = if 2 * pair + 1 < g.in_channels {
                channel_row(2 * pair + 1)
            } else {
                &[][..]
            };
            interleave(channel_row(2 * pair), high, words);
        }
        let first = ((row + p) * l.padded_w + p) * stride;
        for (i, pixel) in out[first..first + w * stride]
            .chunks_exact_mut(stride)
            .enumerate()
        {
            for (pair, word) in pixel[..pairs].iter_mut().enumerate() {
                *word = by_pair[pair * w + i];
            }
        }
    }
}

/// y = conv(x, w) (+ bias, ReLU) for a convolution that `applies`, with the weights packed by
/// `pack_weights`, on the tiles. The caller makes sure the CPU has AMX (`amx::available`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward(
    x: &[f32],
    packed_weights: &[f32],
    bias: Option<&[f32]>,
    relu: bool,
    g: &ConvGeometry,
    threads: usize,
    y: &mut [f32],
) {
    assert!(
        applies(g) && super::amx::available(),
        "direct bf16 convolution"
    );
    let l = Layout::of(g);
    let in_image = g.in_channels * g.in_h * g.in_w;
    let out_image = g.out_channels * g.out_h * g.out_w;
    assert_eq!(x.len(), g.batch * in_image, "conv input length");
    assert_eq!(y.len(), g.batch * out_image, "conv output length");
    assert_eq!(
        packed_weights.len(),
        packed_weights_len(g),
        "packed weights length"
    );
    let image_words = l.pixels * l.pixel_words();
    let mut images = Memory::uninit(g.batch * image_words);
    let words = super::words_mut(&mut images);
    words
        .par_chunks_mut(image_words)
        .zip(x.par_chunks(in_image))
        .for_each(|(out, x)| pack_image(x, g, &l, out));
    let images: &[u32] = words;
    let weights = super::words_of(packed_weights);
    // Work: (image, pair of output tiles, range of pixel blocks), enough pieces for every thread.
    let pairs = l.out_tiles / 2;
    let per_image = g.batch * pairs;
    let parts = (4 * threads).div_ceil(per_image).clamp(1, l.blocks);
    let per_part = l.blocks.div_ceil(parts);
    let out = Out(y.as_mut_ptr(), y.len());
    (0..per_image * parts).into_par_iter().for_each(|item| {
        let (n, rest) = (item / (pairs * parts), item % (pairs * parts));
        let (pair, part) = (rest / parts, rest % parts);
        let blocks = part * per_part..((part + 1) * per_part).min(l.blocks);
        let image = &images[n * image_words..(n + 1) * image_words];
        let first_tile = 2 * pair;
        let pair_words = 2 * l.taps * l.channel_blocks * TILE_WORDS;
        let weights = &weights[first_tile * pair_words / 2..][..pair_words];
        with_tiles(|| {
            for block in blocks {
                // SAFETY: tiles configured; reads inside `image` and `weights` (`Layout::pixels`
                // covers every block's reach; asserted in `block_sums`).
                let sums = unsafe { block_sums(image, weights, &l, block) };
                // SAFETY: items write disjoint (image, output channel pair, pixel block) parts.
                unsafe { out.store(&sums, g, &l, n, first_tile, block, bias, relu) };
            }
        })
    });
}

/// Sums of 32 output pixels (block `block`) by 32 output channels, over every tap and channel:
/// four 16 x 16 tiles [pixels 0-15 x channels 0-15, 0-15 x 16-31, 16-31 x 0-15, 16-31 x 16-31].
///
/// # Safety
/// The tiles must be configured as `amx::with_tiles` does.
unsafe fn block_sums(
    image: &[u32],
    weights: &[u32],
    l: &Layout,
    block: usize,
) -> [[f32; TILE_WORDS]; 4] {
    let pixel_bytes = l.pixel_words() * 4;
    let first = block * 2 * TILE;
    let tile_words = l.taps * l.channel_blocks * TILE_WORDS;
    assert!(weights.len() >= 2 * tile_words);
    let mut sums = [[0.0f32; TILE_WORDS]; 4];
    // SAFETY: the caller configured the tiles; every load below is checked against its slice.
    unsafe {
        zero_sums();
        for tap in 0..l.taps {
            let shift = tap_shift(l, tap);
            for cb in 0..l.channel_blocks {
                let a0 = (first + shift) * l.pixel_words() + cb * TILE;
                let a1 = a0 + TILE * l.pixel_words();
                assert!(a1 + (TILE - 1) * l.pixel_words() + TILE <= image.len());
                let b0 = (tap * l.channel_blocks + cb) * TILE_WORDS;
                let b1 = b0 + tile_words;
                step(
                    [image.as_ptr().add(a0).cast(), image.as_ptr().add(a1).cast()],
                    pixel_bytes,
                    [
                        weights.as_ptr().add(b0).cast(),
                        weights.as_ptr().add(b1).cast(),
                    ],
                    TILE * 4,
                );
            }
        }
        let [s0, s1, s2, s3] = &mut sums;
        store_sums(
            [
                s0.as_mut_ptr(),
                s1.as_mut_ptr(),
                s2.as_mut_ptr(),
                s3.as_mut_ptr(),
            ],
            TILE * 4,
        );
    }
    sums
}

/// Packed pixels between an output pixel's number and its input at `tap`.
fn tap_shift(l: &Layout, tap: usize) -> usize {
    (tap / l.kernel_w) * l.padded_w + tap % l.kernel_w
}

/// The output, written by several items at disjoint parts.
#[derive(Clone, Copy)]
struct Out(*mut f32, usize);

// SAFETY: items write disjoint elements; the pointer outlives them.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    /// The block's sums into NCHW output (+ bias, ReLU), dropping the padded width's columns and
    /// the channels past the last.
    ///
    /// # Safety
    /// No other thread may write these elements meanwhile.
    #[allow(clippy::too_many_arguments)]
    unsafe fn store(
        self,
        sums: &[[f32; TILE_WORDS]; 4],
        g: &ConvGeometry,
        l: &Layout,
        n: usize,
        first_tile: usize,
        block: usize,
        bias: Option<&[f32]>,
        relu: bool,
    ) {
        let plane = g.out_h * g.out_w;
        let image = n * g.out_channels * plane;
        for (t, tile) in sums.iter().enumerate() {
            let first_pixel = block * 2 * TILE + (t / 2) * TILE;
            let first_channel = (first_tile + t % 2) * TILE;
            let channels = TILE.min(g.out_channels.saturating_sub(first_channel));
            let (row, col) = (first_pixel / l.padded_w, first_pixel % l.padded_w);
            if row < g.out_h && col + TILE <= g.out_w {
                // All 16 pixels in one output row (most tiles): each channel's 16 sums, gathered
                // from the tile's column, are 64 contiguous bytes of its plane, written as one run
                // instead of 16 scattered stores.
                let base = image + first_channel * plane + row * g.out_w + col;
                assert!(channels == 0 || base + (channels - 1) * plane + TILE <= self.1);
                for lane in 0..channels {
                    let run: [f32; TILE] = std::array::from_fn(|r| tile[r * TILE + lane]);
                    // SAFETY: inside the output (asserted above); the caller guarantees no
                    // other writer.
                    let dst = unsafe {
                        std::slice::from_raw_parts_mut(self.0.add(base + lane * plane), TILE)
                    };
                    let b = bias.map(|b| b[first_channel + lane]);
                    store_epilogue(dst, &run, b, relu);
                }
                continue;
            }
            // Each of the tile's 16 pixels' place in an output plane, or None past its edges.
            let places: [Option<usize>; TILE] = std::array::from_fn(|r| {
                let q = first_pixel + r;
                let (row, col) = (q / l.padded_w, q % l.padded_w);
                (row < g.out_h && col < g.out_w).then_some(row * g.out_w + col)
            });
            assert!(image + (first_channel + channels) * plane <= self.1 || channels == 0);
            for lane in 0..channels {
                let o = first_channel + lane;
                let b = bias.map_or(0.0, |b| b[o]);
                let base = image + o * plane;
                for (r, place) in places.iter().enumerate() {
                    let Some(place) = place else { continue };
                    let v = tile[r * TILE + lane] + b;
                    // SAFETY: inside the output (asserted above: place < plane); the caller
                    // guarantees no other writer.
                    unsafe {
                        *self.0.add(base + place) = if relu { vgg_tensor::relu(v) } else { v }
                    };
                }
            }
        }
    }
}

/// Output pixels per segment of the weight gradient: a segment's inputs (32 channels) and output
/// gradients (32 channels) in bf16, 256 KiB each, stay in the L2 while all the taps pass over
/// them.
const SEGMENT: usize = 4096;

/// dW for a convolution that `applies`: for each tap, dW[., ., tap]^T (in x out channels) sums
/// X shifted by the tap (in channels x pixels) times dY^T (pixels x out channels). X is packed as
/// plain bf16 planes (a tile row is 32 consecutive pixels of one channel, at any shift), dY as
/// pixel pairs of each output channel. Each image's sums are added in f64.
pub(crate) fn backward_weight(x: &[f32], dy: &[f32], g: &ConvGeometry) -> Vec<f32> {
    assert!(
        applies(g) && super::amx::available(),
        "direct bf16 convolution"
    );
    let l = Layout::of(g);
    let (c, k) = (g.in_channels, g.out_channels);
    let in_image = c * g.in_h * g.in_w;
    let out_plane = g.out_h * g.out_w;
    assert_eq!(x.len(), g.batch * in_image, "conv input length");
    assert_eq!(
        dy.len(),
        g.batch * k * out_plane,
        "conv output-gradient length"
    );
    let c_pad = l.channel_blocks * CHANNELS;
    let k_pad = l.out_tiles * TILE;
    // Pixels numbered across the padded width, in whole 32-pixel blocks.
    let numbered = l.blocks * 2 * TILE;
    // X: [image][channel][padded pixel] bf16, two to a word; dY: [image][pixel pair][out channel].
    let plane_words = l.pixels.div_ceil(2);
    let x_words = c_pad * plane_words;
    let dy_words = numbered / 2 * k_pad;
    let mut packed = Memory::uninit(g.batch * (x_words + dy_words));
    let (xs, dys) = super::words_mut(&mut packed).split_at_mut(g.batch * x_words);
    xs.par_chunks_mut(x_words)
        .zip(x.par_chunks(in_image))
        .for_each(|(out, x)| pack_planes(x, g, &l, plane_words, out));
    dys.par_chunks_mut(dy_words)
        .zip(dy.par_chunks(k * out_plane))
        .for_each(|(out, dy)| pack_pixel_pairs(dy, g, &l, k_pad, out));
    let (xs, dys): (&[u32], &[u32]) = (xs, dys);
    let (c_pairs, k_pairs) = (c_pad / (2 * TILE), k_pad / (2 * TILE));
    // Each item: 32 input channels by 32 output channels, every tap, every image.
    let sums: Vec<Vec<f64>> = (0..c_pairs * k_pairs)
        .into_par_iter()
        .map(|item| {
            let (cp, kp) = (item / k_pairs, item % k_pairs);
            let mut total = vec![0.0f64; l.taps * 4 * TILE_WORDS];
            let mut image_sums = vec![[[0.0f32; TILE_WORDS]; 4]; l.taps];
            with_tiles(|| {
                for n in 0..g.batch {
                    let xn = &xs[n * x_words..(n + 1) * x_words];
                    let dyn_ = &dys[n * dy_words..(n + 1) * dy_words];
                    for sums in image_sums.iter_mut() {
                        *sums = [[0.0; TILE_WORDS]; 4];
                    }
                    for start in (0..numbered).step_by(SEGMENT) {
                        let end = (start + SEGMENT).min(numbered);
                        for (tap, sums) in image_sums.iter_mut().enumerate() {
                            // SAFETY: tiles configured; reads checked in `gradient_sums`.
                            unsafe {
                                gradient_sums(
                                    xn,
                                    dyn_,
                                    &l,
                                    plane_words,
                                    k_pad,
                                    cp,
                                    kp,
                                    tap,
                                    start..end,
                                    sums,
                                )
                            };
                        }
                    }
                    for (tap, sums) in image_sums.iter().enumerate() {
                        for (t, tile) in sums.iter().enumerate() {
                            let at = (tap * 4 + t) * TILE_WORDS;
                            for (acc, &v) in total[at..at + TILE_WORDS].iter_mut().zip(tile) {
                                *acc += v as f64;
                            }
                        }
                    }
                }
            });
            total
        })
        .collect();
    let mut dw = vec![0.0f32; k * c * l.taps];
    for (item, total) in sums.iter().enumerate() {
        let (cp, kp) = (item / k_pairs, item % k_pairs);
        for tap in 0..l.taps {
            for t in 0..4 {
                // Tile t: input channels (t / 2), output channels (t % 2) of the pair.
                let c0 = cp * 2 * TILE + (t / 2) * TILE;
                let k0 = kp * 2 * TILE + (t % 2) * TILE;
                let tile = &total[(tap * 4 + t) * TILE_WORDS..][..TILE_WORDS];
                for r in 0..TILE.min(c.saturating_sub(c0)) {
                    for j in 0..TILE.min(k.saturating_sub(k0)) {
                        dw[((k0 + j) * c + c0 + r) * l.taps + tap] = tile[r * TILE + j] as f32;
                    }
                }
            }
        }
    }
    dw
}

/// One image's input as zero-padded bf16 planes, two values to a word, zero channels and tail.
fn pack_planes(x: &[f32], g: &ConvGeometry, l: &Layout, plane_words: usize, out: &mut [u32]) {
    out.fill(0);
    let (h, w, p) = (g.in_h, g.in_w, g.padding);
    let halves = super::halves_mut(out);
    for ci in 0..g.in_channels {
        let plane = &mut halves[ci * 2 * plane_words..(ci + 1) * 2 * plane_words];
        for row in 0..h {
            let src = &x[(ci * h + row) * w..][..w];
            let first = (row + p) * l.padded_w + p;
            for (d, &v) in plane[first..first + w].iter_mut().zip(src) {
                *d = bits(v) as u16;
            }
        }
    }
}

/// One image's output gradient as [pixel pair][output channel] words, pixels numbered across the
/// padded width (the columns past the output's edge, and channels past the last, zero). Row by
/// row, as `pack_image`: each row's channels rounded first, then written pixel-major.
fn pack_pixel_pairs(dy: &[f32], g: &ConvGeometry, l: &Layout, k_pad: usize, out: &mut [u32]) {
    out.fill(0);
    let (k, oh, ow) = (g.out_channels, g.out_h, g.out_w);
    let halves = super::halves_mut(out);
    let mut rounded = vec![0u16; k * ow];
    for row in 0..oh {
        for (o, dst) in rounded.chunks_exact_mut(ow).enumerate() {
            for (d, &v) in dst.iter_mut().zip(&dy[(o * oh + row) * ow..][..ow]) {
                *d = bits(v) as u16;
            }
        }
        for col in 0..ow {
            let q = row * l.padded_w + col;
            let first = (q / 2) * k_pad * 2 + q % 2;
            for (o, d) in halves[first..first + 2 * k]
                .iter_mut()
                .step_by(2)
                .enumerate()
            {
                *d = rounded[o * ow + col];
            }
        }
    }
}

/// Adds to `sums` (tiles [in 0-15 x out 0-15, in 0-15 x out 16-31, in 16-31 x out 0-15,
/// in 16-31 x out 16-31]) the products over the pixels `pixels` (32-aligned) at `tap`.
///
/// # Safety
/// The tiles must be configured as `amx::with_tiles` does.
#[allow(clippy::too_many_arguments)]
unsafe fn gradient_sums(
    xs: &[u32],
    dys: &[u32],
    l: &Layout,
    plane_words: usize,
    k_pad: usize,
    c_pair: usize,
    k_pair: usize,
    tap: usize,
    pixels: std::ops::Range<usize>,
    sums: &mut [[f32; TILE_WORDS]; 4],
) {
    let shift = tap_shift(l, tap);
    let x_bytes = xs.as_ptr().cast::<u8>();
    let plane_bytes = plane_words * 4;
    let row_bytes = k_pad * 4;
    let c0 = c_pair * 2 * TILE;
    let k0 = k_pair * 2 * TILE;
    // The last bytes read: 16 rows (channels) of 64 bytes from the last block's shifted start,
    // and 16 pixel pairs of 64 bytes.
    let x_last = (c0 + 2 * TILE - 1) * plane_bytes + 2 * (pixels.end - 2 * TILE + shift) + 64;
    assert!(
        x_last <= xs.len() * 4,
        "input reads inside the packed planes"
    );
    let dy_last = ((pixels.end / 2 - 1) * k_pad + k0 + 2 * TILE) * 4;
    assert!(
        dy_last <= dys.len() * 4,
        "gradient reads inside the packed pairs"
    );
    // SAFETY: the caller configured the tiles; the reads are inside the slices (asserted).
    unsafe {
        let [s0, s1, s2, s3] = sums;
        let tiles = [
            s0.as_mut_ptr(),
            s1.as_mut_ptr(),
            s2.as_mut_ptr(),
            s3.as_mut_ptr(),
        ];
        load_sums(tiles.map(|p| p.cast_const()), TILE * 4);
        for q in pixels.step_by(2 * TILE) {
            let a0 = x_bytes.add(c0 * plane_bytes + 2 * (q + shift));
            let b0 = dys.as_ptr().add((q / 2) * k_pad + k0);
            step(
                [a0, a0.add(TILE * plane_bytes)],
                plane_bytes,
                [b0.cast(), b0.add(TILE).cast()],
                row_bytes,
            );
        }
        store_sums(tiles, TILE * 4);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bf16::round;
    use vgg_tensor::{Conv2dParams, Shape};

    /// Against f64 loops over the bf16-rounded operands, on shapes off every tile multiple:
    /// channels not a multiple of 32 (or of 2), output channels not of 16, widths that cut the
    /// 16-pixel tiles across rows, padding 0, 1 and 2, kernels 3x3, 1x1 and 5x3, several images.
    #[test]
    fn matches_the_rounded_operands_summed_in_f64() {
        if !super::super::amx::available() {
            // The backend never takes this path here (conv::forward_with asks for AMX).
            let isa = crate::config::Isa::detected();
            assert_ne!(
                crate::config::Bf16Unit::within(isa),
                crate::config::Bf16Unit::Amx
            );
            return;
        }
        let cases = [
            (2, 40, 20, 13, 11, 3, 3, 1),
            (1, 16, 33, 14, 14, 3, 3, 1),
            (3, 17, 7, 9, 30, 3, 3, 0),
            (1, 64, 64, 5, 5, 1, 1, 0),
            (2, 19, 18, 8, 6, 5, 3, 2),
        ];
        for (n, c, k, h, w, kh, kw, p) in cases {
            let params = Conv2dParams {
                stride: 1,
                padding: p,
            };
            let g = ConvGeometry::new(
                &Shape::from([n, c, h, w]),
                &Shape::from([k, c, kh, kw]),
                params,
            )
            .unwrap();
            let mut x = vec![0.0; n * c * h * w];
            let mut wt = vec![0.0; k * c * kh * kw];
            let mut bias = vec![0.0; k];
            vgg_tensor::random::fill_normal(&mut x, 1, 0, 0.0, 1.0);
            vgg_tensor::random::fill_normal(&mut wt, 2, 0, 0.0, 1.0);
            vgg_tensor::random::fill_normal(&mut bias, 3, 0, 0.0, 1.0);
            // The input under padded position (row, col) of image ni's channel ci, if any.
            let input_at = |ni: usize, ci: usize, row: usize, col: usize| {
                let (iy, ix) = (row.checked_sub(p)?, col.checked_sub(p)?);
                (iy < h && ix < w).then_some(((ni * c + ci) * h + iy) * w + ix)
            };
            let mut dy = vec![0.0; n * k * g.out_h * g.out_w];
            vgg_tensor::random::fill_normal(&mut dy, 4, 0, 0.0, 1.0);
            let dw = backward_weight(&x, &dy, &g);
            for o in 0..k {
                for ci in 0..c {
                    for ky in 0..kh {
                        for kx in 0..kw {
                            let (mut sum, mut magnitude) = (0.0f64, 0.0f64);
                            for ni in 0..n {
                                for oy in 0..g.out_h {
                                    for ox in 0..g.out_w {
                                        let Some(at) = input_at(ni, ci, oy + ky, ox + kx) else {
                                            continue;
                                        };
                                        let xv = round(x[at]) as f64;
                                        let dv =
                                            round(dy[((ni * k + o) * g.out_h + oy) * g.out_w + ox])
                                                as f64;
                                        sum += xv * dv;
                                        magnitude += (xv * dv).abs();
                                    }
                                }
                            }
                            let got = dw[((o * c + ci) * kh + ky) * kw + kx] as f64;
                            let bound =
                                (g.out_h * g.out_w + 1) as f64 * f32::EPSILON as f64 * magnitude
                                    + 1e-30;
                            assert!(
                                (got - sum).abs() <= bound,
                                "dW {n}x{c}x{h}x{w} * {k}x{kh}x{kw} pad {p}: ({o}, {ci}, {ky}, {kx}) {got} vs {sum}"
                            );
                        }
                    }
                }
            }
            let packed = pack_weights(&wt, &g, false);
            let mut y = vec![f32::NAN; n * k * g.out_h * g.out_w];
            forward(&x, &packed, Some(&bias), true, &g, 2, &mut y);
            for ni in 0..n {
                for o in 0..k {
                    for oy in 0..g.out_h {
                        for ox in 0..g.out_w {
                            let (mut sum, mut magnitude) = (bias[o] as f64, bias[o].abs() as f64);
                            for ci in 0..c {
                                for ky in 0..kh {
                                    for kx in 0..kw {
                                        let Some(at) = input_at(ni, ci, oy + ky, ox + kx) else {
                                            continue;
                                        };
                                        let xv = round(x[at]);
                                        let wv = round(wt[((o * c + ci) * kh + ky) * kw + kx]);
                                        sum += xv as f64 * wv as f64;
                                        magnitude += (xv as f64 * wv as f64).abs();
                                    }
                                }
                            }
                            let want = sum.max(0.0);
                            let got = y[((ni * k + o) * g.out_h + oy) * g.out_w + ox] as f64;
                            let bound = (c * kh * kw + 1) as f64 * f32::EPSILON as f64 * magnitude;
                            assert!(
                                (got - want).abs() <= bound,
                                "{n}x{c}x{h}x{w} * {k}x{kh}x{kw} pad {p}: ({ni}, {o}, {oy}, {ox}) {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }
}
