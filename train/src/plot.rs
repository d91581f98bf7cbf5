//! `loss.png`: training loss per step as a line, evaluation loss as points, on axes with
//! tick marks and labels — rasterised here (a small RGB canvas, Bresenham lines, a built-in
//! 3×5 pixel font for numbers and a few capitals) and encoded with the `png` crate.
//!
//! Ranges are widened to "nice" tick steps (1, 2 or 5 × 10ᵏ); non-finite values are skipped
//! and break the line. The file is written to a temporary file and renamed, so a viewer never
//! sees half an image.

use std::io::BufWriter;
use std::path::Path;

use crate::error::{Result, TrainError};

const WHITE: [u8; 3] = [255, 255, 255];
const BLACK: [u8; 3] = [0, 0, 0];
const GRID: [u8; 3] = [228, 228, 228];
/// Training loss (blue) and evaluation loss (orange).
pub const TRAIN_COLOR: [u8; 3] = [31, 119, 180];
pub const EVAL_COLOR: [u8; 3] = [255, 127, 14];

/// Glyph scale: each font pixel is a `SCALE × SCALE` block.
const SCALE: i64 = 2;
const GLYPH_W: i64 = 3 * SCALE;
const GLYPH_H: i64 = 5 * SCALE;
const ADVANCE: i64 = GLYPH_W + SCALE;

const LEFT: i64 = 76;
const RIGHT: i64 = 18;
const TOP: i64 = 30;
const BOTTOM: i64 = 46;

/// The smallest image that leaves room for the axes and labels.
pub const MIN_SIZE: (u32, u32) = (200, 140);

/// Writes the chart as an RGB PNG of `width × height` pixels.
pub fn plot_loss(path: &Path, train: &[(u64, f64)], eval: &[(u64, f64)], width: u32, height: u32) -> Result<()> {
    let pixels = render_loss(train, eval, width, height)?;
    crate::atomic::replace_file(path, |file| {
        let mut encoder = png::Encoder::new(BufWriter::new(file), width, height);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().map_err(std::io::Error::other)?;
        writer.write_image_data(&pixels).map_err(std::io::Error::other)?;
        writer.finish().map_err(std::io::Error::other)
    })
}

/// The chart's pixels, RGB row by row.
pub fn render_loss(train: &[(u64, f64)], eval: &[(u64, f64)], width: u32, height: u32) -> Result<Vec<u8>> {
    if width < MIN_SIZE.0 || height < MIN_SIZE.1 {
        return Err(TrainError::Config(format!(
            "a loss plot needs at least {}×{} pixels, got {width}×{height}",
            MIN_SIZE.0, MIN_SIZE.1
        )));
    }
    let mut c = Canvas::new(i64::from(width), i64::from(height));
    let finite =
        |s: &[(u64, f64)]| s.iter().filter(|(_, v)| v.is_finite()).map(|&(x, y)| (x as f64, y)).collect::<Vec<_>>();
    let points: Vec<(f64, f64)> = finite(train).into_iter().chain(finite(eval)).collect();
    let (x0, x1) = bounds(points.iter().map(|p| p.0), (0.0, 1.0));
    let (y0, y1) = bounds(points.iter().map(|p| p.1), (0.0, 1.0));
    let x_axis = Axis::new(x0, x1, true);
    let y_axis = Axis::new(y0, y1, false);
    let (pw, ph) = (c.w - LEFT - RIGHT, c.h - TOP - BOTTOM);
    let px = |x: f64| LEFT + ((x - x_axis.lo) / (x_axis.hi - x_axis.lo) * (pw - 1) as f64).round() as i64;
    let py = |y: f64| TOP + ph - 1 - ((y - y_axis.lo) / (y_axis.hi - y_axis.lo) * (ph - 1) as f64).round() as i64;

    // Grid, axes, ticks and labels.
    for &t in &x_axis.ticks {
        let x = px(t);
        c.line((x, TOP), (x, TOP + ph - 1), GRID);
        c.line((x, TOP + ph), (x, TOP + ph + 5), BLACK);
        let label = x_axis.label(t);
        c.text(x - text_width(&label) / 2, TOP + ph + 8, &label, BLACK);
    }
    for &t in &y_axis.ticks {
        let y = py(t);
        c.line((LEFT, y), (LEFT + pw - 1, y), GRID);
        c.line((LEFT - 6, y), (LEFT - 1, y), BLACK);
        let label = y_axis.label(t);
        c.text(LEFT - 9 - text_width(&label), y - GLYPH_H / 2, &label, BLACK);
    }
    c.line((LEFT - 1, TOP), (LEFT - 1, TOP + ph), BLACK);
    c.line((LEFT - 1, TOP + ph), (LEFT + pw - 1, TOP + ph), BLACK);
    c.text(LEFT + pw / 2 - text_width("STEP") / 2, c.h - GLYPH_H - 4, "STEP", BLACK);
    c.text(8, 8, "LOSS", BLACK);
    // Legend, top right.
    let mut lx = LEFT + pw - text_width("TRAIN") - 24;
    if !finite(eval).is_empty() {
        lx -= text_width("EVAL") + 30;
        let ex = LEFT + pw - text_width("EVAL") - 4;
        c.square(ex - 12, 8 + GLYPH_H / 2, 3, EVAL_COLOR);
        c.text(ex, 8, "EVAL", BLACK);
    }
    c.thick_line((lx, 8 + GLYPH_H / 2), (lx + 16, 8 + GLYPH_H / 2), TRAIN_COLOR);
    c.text(lx + 20, 8, "TRAIN", BLACK);

    // Data, clipped to the plot area.
    c.clip = (LEFT, TOP, LEFT + pw - 1, TOP + ph - 1);
    let mut prev: Option<(i64, i64)> = None;
    for &(s, v) in train {
        if !v.is_finite() {
            prev = None;
            continue;
        }
        let p = (px(s as f64), py(v));
        match prev {
            Some(q) => c.thick_line(q, p, TRAIN_COLOR),
            None => c.square(p.0, p.1, 1, TRAIN_COLOR),
        }
        prev = Some(p);
    }
    for &(s, v) in eval.iter().filter(|(_, v)| v.is_finite()) {
        c.square(px(s as f64), py(v), 3, EVAL_COLOR);
    }
    Ok(c.pixels)
}

/// The range of `values`, or `empty` when there are none.
fn bounds(values: impl Iterator<Item = f64>, empty: (f64, f64)) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        empty
    } else if lo == hi {
        let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
        (lo - pad, hi + pad)
    } else {
        (lo, hi)
    }
}

/// An axis widened to whole tick steps.
struct Axis {
    lo: f64,
    hi: f64,
    step: f64,
    ticks: Vec<f64>,
}

impl Axis {
    fn new(lo: f64, hi: f64, integer: bool) -> Axis {
        let mut step = nice_step((hi - lo) / 5.0);
        if integer {
            step = step.max(1.0);
        }
        let (lo, hi) = ((lo / step).floor() * step, (hi / step).ceil() * step);
        let n = ((hi - lo) / step).round() as i64;
        let ticks = (0..=n).map(|i| lo + i as f64 * step).collect();
        Axis { lo, hi, step, ticks }
    }

    fn label(&self, v: f64) -> String {
        let v = if v.abs() < self.step * 1e-9 { 0.0 } else { v };
        let big = self.hi.abs().max(self.lo.abs());
        if big >= 1e6 || (big < 1e-3 && big > 0.0) {
            return format!("{v:.1E}");
        }
        let decimals = (-self.step.log10().floor()).max(0.0) as usize;
        format!("{v:.decimals$}")
    }
}

/// 1, 2 or 5 × 10ᵏ, the nearest at or above `raw`.
fn nice_step(raw: f64) -> f64 {
    if !(raw.is_finite() && raw > 0.0) {
        return 1.0;
    }
    let base = 10f64.powf(raw.log10().floor());
    let f = raw / base;
    let m = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    m * base
}

struct Canvas {
    w: i64,
    h: i64,
    pixels: Vec<u8>,
    /// Drawing limits (inclusive): x0, y0, x1, y1.
    clip: (i64, i64, i64, i64),
}

impl Canvas {
    fn new(w: i64, h: i64) -> Canvas {
        let pixels = WHITE.iter().copied().cycle().take((w * h * 3) as usize).collect();
        Canvas { w, h, pixels, clip: (0, 0, w - 1, h - 1) }
    }

    fn set(&mut self, x: i64, y: i64, color: [u8; 3]) {
        let (x0, y0, x1, y1) = self.clip;
        if x < x0 || y < y0 || x > x1 || y > y1 {
            return;
        }
        let i = ((y * self.w + x) * 3) as usize;
        self.pixels[i..i + 3].copy_from_slice(&color);
    }

    /// Bresenham.
    fn line(&mut self, (mut x, mut y): (i64, i64), (x1, y1): (i64, i64), color: [u8; 3]) {
        let (dx, dy) = ((x1 - x).abs(), -(y1 - y).abs());
        let (sx, sy) = (if x < x1 { 1 } else { -1 }, if y < y1 { 1 } else { -1 });
        let mut err = dx + dy;
        loop {
            self.set(x, y, color);
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    /// A two-pixel-wide line.
    fn thick_line(&mut self, a: (i64, i64), b: (i64, i64), color: [u8; 3]) {
        self.line(a, b, color);
        self.line((a.0, a.1 + 1), (b.0, b.1 + 1), color);
    }

    /// A filled square of half-size `r` around `(x, y)`.
    fn square(&mut self, x: i64, y: i64, r: i64, color: [u8; 3]) {
        for yy in y - r..=y + r {
            for xx in x - r..=x + r {
                self.set(xx, yy, color);
            }
        }
    }

    fn text(&mut self, x: i64, y: i64, text: &str, color: [u8; 3]) {
        for (i, ch) in text.chars().enumerate() {
            let rows = glyph(ch);
            for (r, bits) in rows.iter().enumerate() {
                for col in 0..3 {
                    if bits & (0b100 >> col) != 0 {
                        let (gx, gy) = (x + i as i64 * ADVANCE + col * SCALE, y + r as i64 * SCALE);
                        for dy in 0..SCALE {
                            for dx in 0..SCALE {
                                self.set(gx + dx, gy + dy, color);
                            }
                        }
                    }
                }
            }
        }
    }
}

fn text_width(text: &str) -> i64 {
    (text.chars().count() as i64 * ADVANCE - SCALE).max(0)
}

/// 3×5 glyphs, one row of three bits (left = 0b100) per entry; unknown characters are blank.
fn glyph(c: char) -> [u8; 5] {
    match c {
        '0' => [0b111, 0b101, 0b101, 0b101, 0b111],
        '1' => [0b010, 0b110, 0b010, 0b010, 0b111],
        '2' => [0b111, 0b001, 0b111, 0b100, 0b111],
        '3' => [0b111, 0b001, 0b111, 0b001, 0b111],
        '4' => [0b101, 0b101, 0b111, 0b001, 0b001],
        '5' => [0b111, 0b100, 0b111, 0b001, 0b111],
        '6' => [0b111, 0b100, 0b111, 0b101, 0b111],
        '7' => [0b111, 0b001, 0b001, 0b001, 0b001],
        '8' => [0b111, 0b101, 0b111, 0b101, 0b111],
        '9' => [0b111, 0b101, 0b111, 0b001, 0b111],
        '.' => [0b000, 0b000, 0b000, 0b000, 0b010],
        '-' => [0b000, 0b000, 0b111, 0b000, 0b000],
        '+' => [0b000, 0b010, 0b111, 0b010, 0b000],
        'A' => [0b010, 0b101, 0b111, 0b101, 0b101],
        'E' => [0b111, 0b100, 0b111, 0b100, 0b111],
        'I' => [0b111, 0b010, 0b010, 0b010, 0b111],
        'L' => [0b100, 0b100, 0b100, 0b100, 0b111],
        'N' => [0b110, 0b101, 0b101, 0b101, 0b101],
        'O' => [0b010, 0b101, 0b101, 0b101, 0b010],
        'P' => [0b110, 0b101, 0b110, 0b100, 0b100],
        'R' => [0b110, 0b101, 0b110, 0b101, 0b101],
        'S' => [0b011, 0b100, 0b010, 0b001, 0b110],
        'T' => [0b111, 0b010, 0b010, 0b010, 0b010],
        'V' => [0b101, 0b101, 0b101, 0b101, 0b010],
        _ => [0; 5],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pixel(p: &[u8], w: u32, x: u32, y: u32) -> [u8; 3] {
        let i = ((y * w + x) * 3) as usize;
        [p[i], p[i + 1], p[i + 2]]
    }

    #[test]
    fn writes_a_png_of_the_stated_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("loss.png");
        let train: Vec<(u64, f64)> = (1..=200).map(|s| (s, 2.0 * (-(s as f64) / 60.0).exp() + 0.3)).collect();
        let eval = vec![(50, 1.0), (100, 0.7), (150, f64::NAN), (200, 0.45)];
        plot_loss(&path, &train, &eval, 640, 400).unwrap();
        let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&path).unwrap()));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (640, 400));
        assert_eq!((info.color_type, info.bit_depth), (png::ColorType::Rgb, png::BitDepth::Eight));
        let px = &buf[..info.buffer_size()];
        assert_eq!(px, &render_loss(&train, &eval, 640, 400).unwrap()[..]);
        assert_eq!(pixel(px, 640, 639, 399), WHITE);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o644);
        }
        // The x axis runs along the bottom of the plot area, the y axis along its left.
        assert_eq!(pixel(px, 640, 320, (400 - BOTTOM) as u32), BLACK);
        assert_eq!(pixel(px, 640, (LEFT - 1) as u32, 200), BLACK);
        let count = |c: [u8; 3]| px.chunks(3).filter(|p| *p == c).count();
        assert!(count(TRAIN_COLOR) > 500, "{}", count(TRAIN_COLOR));
        assert!(count(EVAL_COLOR) >= 3 * 49, "{}", count(EVAL_COLOR));
        // Nothing of the data outside the plot area (bar the legend at the top).
        for y in (400 - BOTTOM + 1) as u32..400 {
            for x in 0..640 {
                assert_ne!(pixel(px, 640, x, y), TRAIN_COLOR);
            }
        }
    }

    #[test]
    fn ticks_are_nice_and_degenerate_input_still_draws() {
        assert_eq!(nice_step(0.23), 0.5);
        assert_eq!(nice_step(13.0), 20.0);
        assert_eq!(nice_step(0.0), 1.0);
        let a = Axis::new(0.31, 2.28, false);
        assert_eq!((a.lo, a.hi, a.step), (0.0, 2.5, 0.5));
        assert_eq!(a.label(1.5), "1.5");
        let steps = Axis::new(1.0, 7.0, true);
        assert_eq!(steps.step, 2.0);
        assert_eq!(steps.label(4.0), "4");
        assert_eq!(Axis::new(1e-5, 5e-5, false).label(2e-5), "2.0E-5");
        for (train, eval) in
            [(vec![], vec![]), (vec![(3, 1.0)], vec![]), (vec![(1, f64::NAN), (2, f64::INFINITY)], vec![(1, 2.0)])]
        {
            let p = render_loss(&train, &eval, 300, 200).unwrap();
            assert_eq!(p.len(), 300 * 200 * 3);
        }
        let e = render_loss(&[], &[], 100, 50).unwrap_err().to_string();
        assert!(e.contains("at least 200×140 pixels"), "{e}");
    }
}
