//! Maps drawn as pictures for `vgg explain`: a heat map over the image (Grad-CAM), a map on its
//! own (saliency), a layer's activations and the first layer's filters as grids, and PNG bytes.
//! Colours come from colorous (matplotlib's turbo, inferno and viridis), not from our own tables.

use image::{Rgb, RgbImage};

/// How much of the colour a map's largest value shows over the image; smaller values show in
/// proportion, and zero leaves the image as it is.
pub const OVERLAY_OPACITY: f32 = 0.6;

/// Stand-alone maps are scaled to this quantile of their values, so that a few extreme pixels
/// (saliency has them) do not leave the rest black.
pub const MAP_QUANTILE: f32 = 0.99;

/// Pixels between the tiles of a grid, left white.
const GAP: u32 = 2;

fn colour(gradient: colorous::Gradient, t: f32) -> [u8; 3] {
    let c = gradient.eval_continuous(t.clamp(0.0, 1.0) as f64);
    [c.r, c.g, c.b]
}

/// `map` (row-major, the image's size) over `image`: each value divided by the map's largest,
/// in turbo colours, blended in proportion to the value (see [`OVERLAY_OPACITY`]).
pub fn heat_overlay(image: &RgbImage, map: &[f32]) -> RgbImage {
    assert_eq!(map.len(), (image.width() * image.height()) as usize);
    let top = map.iter().cloned().fold(0.0f32, f32::max);
    let mut out = image.clone();
    if top <= 0.0 || !top.is_finite() {
        return out;
    }
    for (pixel, &v) in out.pixels_mut().zip(map) {
        let t = (v / top).clamp(0.0, 1.0);
        let c = colour(colorous::TURBO, t);
        let alpha = OVERLAY_OPACITY * t;
        for (p, c) in pixel.0.iter_mut().zip(c) {
            *p = ((1.0 - alpha) * *p as f32 + alpha * c as f32).round() as u8;
        }
    }
    out
}

/// The value at quantile `q` of `values` (0 for none).
fn quantile(values: &[f32], q: f32) -> f32 {
    let mut sorted: Vec<f32> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return 0.0;
    }
    sorted.sort_by(f32::total_cmp);
    sorted[((sorted.len() - 1) as f32 * q).round() as usize]
}

/// A non-negative map on its own, width x height, in inferno colours (black for zero), scaled
/// to its [`MAP_QUANTILE`] quantile.
pub fn heat_map(map: &[f32], width: u32, height: u32) -> RgbImage {
    assert_eq!(map.len(), (width * height) as usize);
    let top = quantile(map, MAP_QUANTILE);
    RgbImage::from_fn(width, height, |x, y| {
        let v = map[(y * width + x) as usize];
        let t = if top > 0.0 { v / top } else { 0.0 };
        Rgb(colour(colorous::INFERNO, t))
    })
}

/// Tiles of `side_w` x `side_h` pixels in rows of `columns`, white between them; `tile(i, x, y)`
/// colours pixel (x, y) of tile i.
fn grid(
    tiles: usize,
    (side_w, side_h): (u32, u32),
    columns: usize,
    tile: impl Fn(usize, u32, u32) -> [u8; 3],
) -> RgbImage {
    let columns = columns.clamp(1, tiles.max(1)) as u32;
    let rows = tiles.div_ceil(columns as usize).max(1) as u32;
    let width = columns * side_w + (columns - 1) * GAP;
    let height = rows * side_h + (rows - 1) * GAP;
    let mut out = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
    for i in 0..tiles {
        let (col, row) = (i as u32 % columns, i as u32 / columns);
        let (x0, y0) = (col * (side_w + GAP), row * (side_h + GAP));
        for y in 0..side_h {
            for x in 0..side_w {
                out.put_pixel(x0 + x, y0 + y, Rgb(tile(i, x, y)));
            }
        }
    }
    out
}

/// The smallest and largest of `values`, which each map or filter of a grid is scaled to.
fn range_of(values: &[f32]) -> (f32, f32) {
    values
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        })
}

/// The nearest-neighbour enlargement that makes a side of `side` pixels at least `at_least`.
fn enlargement(side: usize, at_least: usize) -> u32 {
    at_least.div_ceil(side.max(1)).max(1) as u32
}

/// Largest side of a tile in a grid of activations: a layer of 224x224 maps is shown at every
/// other pixel, so that 64 of them stay a picture of a sensible size.
const MAX_TILE: usize = 112;

/// `picture` enlarged by whole pixels (nearest neighbour) until its larger side is at least
/// `at_least`; a 32x32 digit becomes 128x128, a 224x224 picture stays as it is.
pub fn enlarged(picture: &RgbImage, at_least: u32) -> RgbImage {
    let k = enlargement(
        picture.width().max(picture.height()) as usize,
        at_least as usize,
    );
    if k == 1 {
        return picture.clone();
    }
    RgbImage::from_fn(picture.width() * k, picture.height() * k, |x, y| {
        *picture.get_pixel(x / k, y / k)
    })
}

/// The first `shown` of `channels` activation maps of `height` x `width` (values [C, h, w],
/// row-major) as a grid, each map scaled to its own range in viridis colours, enlarged so that
/// a tile is at least 48 pixels wide and sampled so that it is at most 112.
pub fn feature_grid(
    values: &[f32],
    (channels, height, width): (usize, usize, usize),
    shown: usize,
) -> RgbImage {
    assert_eq!(values.len(), channels * height * width);
    let shown = shown.min(channels);
    // Pixels of the map per pixel of the tile: up (enlarged) or down (every k-th).
    let up = enlargement(width.max(height), 48);
    let down = width.max(height).div_ceil(MAX_TILE).max(1) as u32;
    let plane = height * width;
    let ranges: Vec<(f32, f32)> = (0..shown)
        .map(|c| range_of(&values[c * plane..(c + 1) * plane]))
        .collect();
    let columns = (shown as f64).sqrt().ceil() as usize;
    let side = (
        (width as u32).div_ceil(down) * up,
        (height as u32).div_ceil(down) * up,
    );
    grid(shown, side, columns, |c, x, y| {
        let (mx, my) = ((x / up * down) as usize, (y / up * down) as usize);
        let v = values[c * plane + my * width + mx];
        let (lo, hi) = ranges[c];
        let t = if hi > lo { (v - lo) / (hi - lo) } else { 0.0 };
        colour(colorous::VIRIDIS, t)
    })
}

/// A first convolution's filters, weights [O, I, kh, kw] row-major, as a grid of patches: RGB
/// for three input channels, grey for one (other counts show their first channel), each filter
/// scaled to its own range and enlarged so that a patch is at least 48 pixels wide.
pub fn filter_grid(
    weights: &[f32],
    (out, inputs, kh, kw): (usize, usize, usize, usize),
) -> RgbImage {
    assert_eq!(weights.len(), out * inputs * kh * kw);
    let per_filter = inputs * kh * kw;
    let scale = enlargement(kw.max(kh), 48);
    let ranges: Vec<(f32, f32)> = (0..out)
        .map(|o| range_of(&weights[o * per_filter..(o + 1) * per_filter]))
        .collect();
    let columns = (out as f64).sqrt().ceil() as usize;
    let side = (kw as u32 * scale, kh as u32 * scale);
    grid(out, side, columns, |o, x, y| {
        let (lo, hi) = ranges[o];
        let at = |channel: usize| {
            let v = weights[o * per_filter
                + channel * kh * kw
                + (y / scale) as usize * kw
                + (x / scale) as usize];
            let t = if hi > lo { (v - lo) / (hi - lo) } else { 0.5 };
            (t * 255.0).round() as u8
        };
        if inputs == 3 {
            [at(0), at(1), at(2)]
        } else {
            let g = at(0);
            [g, g, g]
        }
    })
}

/// The picture as PNG file bytes.
pub fn png(picture: &RgbImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    picture
        .write_to(&mut out, image::ImageFormat::Png)
        .expect("PNG encoding into memory does not fail");
    out.into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_overlay_leaves_zero_untouched_and_colours_the_peak() {
        let base = RgbImage::from_pixel(2, 1, Rgb([100, 100, 100]));
        let out = heat_overlay(&base, &[0.0, 4.0]);
        assert_eq!(out.get_pixel(0, 0).0, [100, 100, 100]);
        let top = colour(colorous::TURBO, 1.0);
        let want: Vec<u8> = top
            .iter()
            .map(|&c| (0.4 * 100.0 + 0.6 * c as f32).round() as u8)
            .collect();
        assert_eq!(out.get_pixel(1, 0).0.to_vec(), want);
        // An all-zero map (nothing found) is the image itself.
        assert_eq!(heat_overlay(&base, &[0.0, 0.0]), base);
    }

    #[test]
    fn a_map_is_scaled_to_its_quantile_so_one_outlier_does_not_darken_it() {
        let mut map = vec![1.0; 200];
        map[0] = 1000.0;
        let pic = heat_map(&map, 20, 10);
        // Every ordinary pixel shows the top colour, not black.
        assert_eq!(pic.get_pixel(5, 5).0, colour(colorous::INFERNO, 1.0));
        assert_eq!(
            heat_map(&[0.0; 4], 2, 2).get_pixel(1, 1).0,
            colour(colorous::INFERNO, 0.0)
        );
    }

    #[test]
    fn grids_place_enlarged_tiles_with_white_gaps() {
        // Five 2x2 maps: 3 columns, 2 rows, tiles enlarged 24x to 48 pixels.
        let values: Vec<f32> = (0..20).map(|v| v as f32).collect();
        let g = feature_grid(&values, (5, 2, 2), 64);
        assert_eq!((g.width(), g.height()), (3 * 48 + 2 * GAP, 2 * 48 + GAP));
        // Each map's lowest value is viridis' start, its highest the end; gaps and the unused
        // sixth tile are white.
        assert_eq!(g.get_pixel(0, 0).0, colour(colorous::VIRIDIS, 0.0));
        assert_eq!(g.get_pixel(47, 47).0, colour(colorous::VIRIDIS, 1.0));
        assert_eq!(g.get_pixel(48, 0).0, [255, 255, 255]);
        assert_eq!(
            g.get_pixel(g.width() - 1, g.height() - 1).0,
            [255, 255, 255]
        );
        // Two RGB filters of 1x1: each its own range, so the pixel's channels are 0, 127.5, 255.
        // 224x224 maps are drawn from every other pixel: 112 wide, the value at (2x, 2y).
        let big: Vec<f32> = (0..224 * 224).map(|i| (i % 224) as f32).collect();
        let g = feature_grid(&big, (1, 224, 224), 64);
        assert_eq!((g.width(), g.height()), (112, 112));
        assert_eq!(
            g.get_pixel(111, 0).0,
            colour(colorous::VIRIDIS, 222.0 / 223.0)
        );
        let f = filter_grid(&[0.0, 1.0, 2.0, -1.0, -1.0, 1.0], (2, 3, 1, 1));
        assert_eq!(f.get_pixel(0, 0).0, [0, 128, 255]);
        assert_eq!(f.get_pixel(48 + GAP, 0).0, [0, 0, 255]);
    }

    #[test]
    fn small_pictures_are_enlarged_by_whole_pixels() {
        let pic = RgbImage::from_fn(32, 30, |x, y| Rgb([x as u8, y as u8, 0]));
        let big = enlarged(&pic, 128);
        assert_eq!((big.width(), big.height()), (128, 120));
        assert_eq!(big.get_pixel(127, 119).0, [31, 29, 0]);
        assert_eq!(big.get_pixel(4, 3).0, [1, 0, 0]);
        assert_eq!(enlarged(&pic, 16), pic);
    }

    #[test]
    fn png_bytes_decode_to_the_same_picture() {
        let pic = RgbImage::from_fn(3, 2, |x, y| Rgb([x as u8 * 80, y as u8 * 100, 7]));
        let back = image::load_from_memory(&png(&pic)).unwrap().to_rgb8();
        assert_eq!(back, pic);
    }
}
