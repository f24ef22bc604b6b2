//! Power-law (1/f^β) random fields by spectral synthesis: white Gaussian noise → 2-D FFT →
//! amplitude × f^(−β/2) → inverse FFT. Mammographic parenchyma has a power spectrum P(f) ∝ 1/f^β
//! with β ≈ 3 (Burgess, Jacobson & Judy, "Human observer detection experiments with mammograms and
//! power-law noise", Med. Phys. 28(4):419–437, 2001; Heine & Velthuizen, Med. Phys. 29(5), 2002).

use rustfft::num_complex::Complex32;
use rustfft::FftPlanner;

use super::SplitMix64;

/// A `width × height` field with power spectrum ∝ 1/f^β (DC removed), normalised to zero mean and
/// unit standard deviation. Deterministic in `rng`'s state. Periodic at its borders.
pub fn power_law_field(width: usize, height: usize, beta: f32, rng: &mut SplitMix64) -> Vec<f32> {
    let mut planner = FftPlanner::<f32>::new();
    let n = width * height;
    let mut buf: Vec<Complex32> = (0..n)
        .map(|_| Complex32::new(rng.normal() as f32, 0.0))
        .collect();
    fft2(&mut planner, &mut buf, width, height, false);
    for y in 0..height {
        let fy = if y <= height / 2 {
            y as f32
        } else {
            y as f32 - height as f32
        } / height as f32;
        for x in 0..width {
            let fx = if x <= width / 2 {
                x as f32
            } else {
                x as f32 - width as f32
            } / width as f32;
            let f = (fx * fx + fy * fy).sqrt();
            let a = if f == 0.0 { 0.0 } else { f.powf(-beta / 2.0) };
            buf[y * width + x] *= a;
        }
    }
    fft2(&mut planner, &mut buf, width, height, true);
    let mut out: Vec<f32> = buf.iter().map(|c| c.re).collect();
    let mean = out.iter().sum::<f32>() / n as f32;
    let var = out.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n as f32;
    let sd = var.sqrt().max(1e-12);
    for v in &mut out {
        *v = (*v - mean) / sd;
    }
    out
}

fn fft2(planner: &mut FftPlanner<f32>, buf: &mut [Complex32], w: usize, h: usize, inverse: bool) {
    let row = if inverse {
        planner.plan_fft_inverse(w)
    } else {
        planner.plan_fft_forward(w)
    };
    for r in buf.chunks_exact_mut(w) {
        row.process(r);
    }
    let col = if inverse {
        planner.plan_fft_inverse(h)
    } else {
        planner.plan_fft_forward(h)
    };
    let mut tmp = vec![Complex32::new(0.0, 0.0); h];
    for x in 0..w {
        for y in 0..h {
            tmp[y] = buf[y * w + x];
        }
        col.process(&mut tmp);
        for y in 0..h {
            buf[y * w + x] = tmp[y];
        }
    }
}

/// Bilinear sample of a `w × h` field at fractional coordinates (clamped at the borders).
pub fn sample(field: &[f32], w: usize, h: usize, x: f32, y: f32) -> f32 {
    let x = x.clamp(0.0, (w - 1) as f32);
    let y = y.clamp(0.0, (h - 1) as f32);
    let (x0, y0) = (x.floor() as usize, y.floor() as usize);
    let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
    let (tx, ty) = (x - x0 as f32, y - y0 as f32);
    let a = field[y0 * w + x0] * (1.0 - tx) + field[y0 * w + x1] * tx;
    let b = field[y1 * w + x0] * (1.0 - tx) + field[y1 * w + x1] * tx;
    a * (1.0 - ty) + b * ty
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Radially averaged power at two frequencies: the log-log slope must be close to −β.
    #[test]
    fn spectrum_follows_the_power_law() {
        let (w, h, beta) = (128, 128, 3.0);
        let f = power_law_field(w, h, beta, &mut SplitMix64::new(3));
        let mut planner = FftPlanner::<f32>::new();
        let mut buf: Vec<Complex32> = f.iter().map(|&v| Complex32::new(v, 0.0)).collect();
        fft2(&mut planner, &mut buf, w, h, false);
        let band = |lo: f32, hi: f32| {
            let (mut s, mut n) = (0.0f64, 0);
            for y in 0..h {
                let fy = if y <= h / 2 {
                    y as f32
                } else {
                    y as f32 - h as f32
                };
                for x in 0..w {
                    let fx = if x <= w / 2 {
                        x as f32
                    } else {
                        x as f32 - w as f32
                    };
                    let r = (fx * fx + fy * fy).sqrt();
                    if r >= lo && r < hi {
                        s += buf[y * w + x].norm_sqr() as f64;
                        n += 1;
                    }
                }
            }
            s / n as f64
        };
        let (p1, p2) = (band(4.0, 6.0), band(16.0, 24.0));
        let slope = (p2 / p1).ln() / (20.0f64 / 5.0).ln();
        assert!((slope + beta as f64).abs() < 0.3, "slope {slope}");
        let mean = f.iter().sum::<f32>() / f.len() as f32;
        assert!(mean.abs() < 1e-4);
    }
}
