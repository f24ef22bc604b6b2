//! Contact sheet of a synthetic data set: one tile per vendor and view (decoded back through the
//! ingest, so the sheet shows what the daemon sees) with vendor, view, density and label underneath.

use std::path::Path;

use image::{imageops, ImageBuffer, Luma};

use super::font;
use super::generator::Generated;
use super::SynthError;
use crate::ingest::dicom::{read_mammogram, IngestOptions};

const TILE_W: u32 = 200;
const TILE_H: u32 = 250;
const CAPTION_H: u32 = 46;

/// Write a PNG with one tile per (vendor, view) found in `rows` (first image of each), in row-major
/// order by vendor. `root` is the data set folder the manifest paths are relative to.
pub fn contact_sheet(root: &Path, rows: &[Generated], out: &Path) -> Result<(), SynthError> {
    let mut picked: Vec<&Generated> = Vec::new();
    for g in rows {
        if !picked
            .iter()
            .any(|p| p.row.vendor == g.row.vendor && p.row.view == g.row.view)
        {
            picked.push(g);
        }
    }
    picked.sort_by_key(|g| {
        (
            g.row.vendor.map(|v| v as usize),
            g.row.view.map(|v| v as usize),
        )
    });
    let n = picked.len() as u32;
    let per_row = n.clamp(1, 4);
    let (w, h) = (
        per_row * TILE_W,
        n.div_ceil(per_row).max(1) * (TILE_H + CAPTION_H),
    );
    let mut sheet: ImageBuffer<Luma<u8>, Vec<u8>> = ImageBuffer::from_pixel(w, h, Luma([24]));
    for (i, g) in picked.iter().enumerate() {
        let (tx, ty) = (
            (i as u32 % per_row) * TILE_W,
            (i as u32 / per_row) * (TILE_H + CAPTION_H),
        );
        let m =
            read_mammogram(&root.join(&g.row.path), &IngestOptions::default()).map_err(|e| {
                SynthError::Write {
                    path: g.row.path.clone(),
                    detail: format!("does not decode through the ingest: {e}"),
                }
            })?;
        let img: ImageBuffer<Luma<u8>, Vec<u8>> = ImageBuffer::from_raw(
            m.image.width as u32,
            m.image.height as u32,
            m.image
                .data
                .iter()
                .map(|&v| (v * 255.0).round() as u8)
                .collect(),
        )
        .expect("image size");
        let thumb = imageops::thumbnail(&img, TILE_W - 4, TILE_H - 4);
        imageops::overlay(&mut sheet, &thumb, (tx + 2) as i64, (ty + 2) as i64);
        let label = if g.findings.iter().any(|k| k.is_malignant()) {
            "CANCER"
        } else if !g.findings.is_empty() {
            "BENIGN"
        } else {
            "NORMAL"
        };
        let lines = [
            format!(
                "{} {}{}",
                g.row.vendor.map(|v| v.as_str()).unwrap_or("-"),
                g.row.laterality.map(|l| l.as_str()).unwrap_or("-"),
                g.row.view.map(|v| v.as_str()).unwrap_or("-")
            ),
            format!(
                "{} PD {:.1}%",
                g.density_true,
                g.row.percent_density.unwrap_or(0.0)
            ),
            label.to_string(),
        ];
        for (k, line) in lines.iter().enumerate() {
            font::draw(
                &line.to_uppercase().replace('_', " "),
                (tx + 4) as usize,
                (ty + TILE_H + 2 + k as u32 * 14) as usize,
                1,
                |x, y| {
                    if (x as u32) < w && (y as u32) < h {
                        sheet.put_pixel(x as u32, y as u32, Luma([235]));
                    }
                },
            );
        }
    }
    sheet.save(out).map_err(|e| SynthError::Write {
        path: out.display().to_string(),
        detail: e.to_string(),
    })
}
