//! The phantom generator: determinism, label consistency, findings in both views, every vendor
//! style through our own ingest (plain and compressed), DICOM validity (dciodvfy), distributions.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use mammo_edge::dataset::manifest;
use mammo_edge::ingest::dicom::{read_mammogram, IngestOptions, Laterality, View};
use mammo_edge::model::labels::Density;
use mammo_edge::synth::anatomy::{self, BreastParams, Lesion, LesionKind};
use mammo_edge::synth::generator::{generate, SynthConfig, MASK_BREAST, MASK_DENSE};
use mammo_edge::synth::style::styled_vendors;

use crate::util::*;

fn small(count: usize, seed: u64) -> SynthConfig {
    SynthConfig {
        count,
        seed,
        scale: 0.06,
        ..Default::default()
    }
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v = Vec::new();
    for sub in ["images", "masks"] {
        let mut names: Vec<_> = std::fs::read_dir(dir.join(sub))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for p in names {
            v.push((
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            ));
        }
    }
    v.push((
        "manifest.csv".into(),
        std::fs::read(dir.join("manifest.csv")).unwrap(),
    ));
    v
}

#[test]
fn same_seed_same_bytes_whatever_the_thread_count() {
    let (a, b, c) = (tmp(), tmp(), tmp());
    generate(
        &SynthConfig {
            threads: 1,
            ..small(8, 42)
        },
        a.path(),
    )
    .unwrap();
    generate(
        &SynthConfig {
            threads: 3,
            ..small(8, 42)
        },
        b.path(),
    )
    .unwrap();
    generate(&small(8, 43), c.path()).unwrap();
    let (fa, fb, fc) = (files(a.path()), files(b.path()), files(c.path()));
    assert_eq!(fa.len(), 8 + 8 + 1);
    assert!(fa == fb, "same seed gave different bytes");
    assert!(
        fa.iter().zip(&fc).any(|(x, y)| x.1 != y.1),
        "another seed gave the same bytes"
    );
}

#[test]
fn percent_density_and_class_match_the_mask_and_the_quartile_rule() {
    let d = tmp();
    let cfg = SynthConfig {
        density_weights: [1.0, 1.0, 1.0, 1.0],
        ..small(32, 7)
    };
    let gen = generate(&cfg, d.path()).unwrap();
    let rows = manifest::read(&d.path().join("manifest.csv")).unwrap();
    assert_eq!(rows.len(), 32);
    for (g, r) in gen.iter().zip(&rows) {
        let mask = image::open(d.path().join(r.mask_path.as_ref().unwrap()))
            .unwrap()
            .into_luma8();
        let dense = mask.pixels().filter(|p| p.0[0] == MASK_DENSE).count();
        let breast = mask.pixels().filter(|p| p.0[0] >= MASK_BREAST).count();
        let pd = dense as f64 / breast as f64 * 100.0;
        let listed = r.percent_density.unwrap();
        assert!(
            (pd - listed).abs() < 0.01,
            "{}: mask {pd} vs manifest {listed}",
            r.path
        );
        assert_eq!(
            Density::from_percent(listed),
            g.density_true,
            "{}: PD {listed}",
            r.path
        );
        assert_eq!(r.density, Some(g.density_true), "no label noise configured");
        // per-image PD is that image's own: CC and MLO of one breast differ slightly
        assert!(breast > 100);
    }
}

#[test]
fn a_cancer_breast_shows_its_finding_in_both_views() {
    let d = tmp();
    let cfg = SynthConfig {
        prevalence: 1.0,
        benign_rate: 0.0,
        ..small(16, 11)
    };
    let gen = generate(&cfg, d.path()).unwrap();
    let mut by_breast: HashMap<
        (String, Laterality),
        Vec<&mammo_edge::synth::generator::Generated>,
    > = HashMap::new();
    for g in &gen {
        by_breast
            .entry((g.row.patient_id.clone(), g.row.laterality.unwrap()))
            .or_default()
            .push(g);
    }
    let mut cancer_breasts = 0;
    for (_, views) in by_breast {
        assert_eq!(views.len(), 2);
        let (a, b) = (views[0], views[1]);
        assert_eq!(a.row.cancer, b.row.cancer);
        assert_eq!(a.findings, b.findings);
        if a.row.cancer == Some(true) {
            cancer_breasts += 1;
            assert!(a.findings.iter().any(|k| k.is_malignant()));
            for g in [a, b] {
                let x = &g
                    .row
                    .extra
                    .iter()
                    .find(|(k, _)| k == "finding_x")
                    .unwrap()
                    .1;
                assert!(!x.is_empty(), "finding position recorded in {}", g.row.path);
                assert_eq!(g.row.normal, Some(false));
            }
        }
    }
    assert_eq!(cancer_breasts, 4, "one malignant breast per exam");
}

#[test]
fn the_finding_changes_pixels_at_its_place_in_cc_and_mlo() {
    for kind in [
        LesionKind::SpiculatedMass,
        LesionKind::PleomorphicCalcifications,
        LesionKind::ArchitecturalDistortion,
    ] {
        for view in [View::CC, View::MLO] {
            let lesion = Lesion {
                kind,
                u: 0.5,
                v: 0.1,
                size_mm: 8.0,
                subtlety: 0.0,
                seed: 5,
            };
            let base = BreastParams {
                view,
                percent_density: 30.0,
                depth: 0.6,
                half_height: 0.38,
                center_y: 0.5,
                pectoral: (0.3, 0.45),
                beta: 3.0,
                findings: vec![],
                seed: 9,
            };
            let with = BreastParams {
                findings: vec![lesion],
                ..base.clone()
            };
            let (w, h, sp) = (400, 500, 0.2);
            let a = anatomy::render(&base, w, h, sp);
            let b = anatomy::render(&with, w, h, sp);
            let (cx, cy, r) = b.finding_boxes[0];
            let (mut inside, mut outside) = (0f32, 0f32);
            for y in 0..h {
                for x in 0..w {
                    let diff = (b.grey[y * w + x] - a.grey[y * w + x]).abs();
                    let dist = ((x as f32 - cx).powi(2) + (y as f32 - cy).powi(2)).sqrt();
                    if dist <= 3.5 * r {
                        inside += diff
                    } else {
                        outside += diff
                    }
                }
            }
            assert!(
                inside > 1.0,
                "{kind:?} {view:?}: finding invisible ({inside})"
            );
            assert_eq!(
                outside, 0.0,
                "{kind:?} {view:?}: changes outside the finding"
            );
            assert_eq!(a.dense, b.dense, "findings do not change the density mask");
        }
    }
}

#[test]
fn every_vendor_style_decodes_through_our_ingest_plain_and_compressed() {
    for vendor in styled_vendors() {
        let (plain, packed) = (tmp(), tmp());
        let cfg = SynthConfig {
            vendors: vec![vendor],
            scale: 0.08,
            ..small(4, 3)
        };
        let gen = generate(&cfg, plain.path()).unwrap();
        generate(
            &SynthConfig {
                compress: true,
                ..cfg.clone()
            },
            packed.path(),
        )
        .unwrap();
        for g in &gen {
            let m = read(&plain.path().join(&g.row.path));
            assert_eq!(m.meta.vendor, vendor);
            assert_eq!(m.meta.laterality, g.row.laterality);
            assert_eq!(Some(m.meta.view), g.row.view);
            let s = m.image.stats();
            assert!(
                s.max > 0.5 && s.mean > 0.05 && s.mean < 0.8,
                "{vendor}: {s:?}"
            );
            let c = read_mammogram(&packed.path().join(&g.row.path), &IngestOptions::default())
                .unwrap();
            assert_eq!(
                max_abs_diff(&m, &c),
                0.0,
                "{vendor}: compressed twin differs ({})",
                c.meta.transfer_syntax_name
            );
        }
    }
}

/// (mean, standard deviation, mean |Laplacian|) of the grey levels: tone, contrast, sharpness/noise.
fn signature(m: &mammo_edge::ingest::dicom::Mammogram) -> [f64; 3] {
    let (w, h, d) = (m.image.width, m.image.height, &m.image.data);
    let n = d.len() as f64;
    let mean = d.iter().map(|&v| v as f64).sum::<f64>() / n;
    let sd = (d.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
    let mut lap = 0.0;
    for y in 1..h - 1 {
        for x in 1..w - 1 {
            let c = d[y * w + x] as f64;
            let s = d[y * w + x - 1] + d[y * w + x + 1] + d[(y - 1) * w + x] + d[(y + 1) * w + x];
            lap += (s as f64 - 4.0 * c).abs();
        }
    }
    [mean, sd, lap / ((w - 2) * (h - 2)) as f64]
}

#[test]
fn vendor_styles_differ_in_what_the_model_sees() {
    // The same woman (same seed, so the same anatomy) imaged on each vendor's system.
    let mut sigs = Vec::new();
    for vendor in styled_vendors() {
        let d = tmp();
        let cfg = SynthConfig {
            vendors: vec![vendor],
            ..small(4, 21)
        };
        let gen = generate(&cfg, d.path()).unwrap();
        let m = read(&d.path().join(&gen[0].row.path));
        sigs.push((vendor, signature(&m)));
    }
    for (i, (va, a)) in sigs.iter().enumerate() {
        for (vb, b) in &sigs[i + 1..] {
            let rel = (0..3)
                .map(|k| (a[k] - b[k]).abs() / a[k].max(b[k]))
                .fold(0.0, f64::max);
            assert!(rel > 0.1, "{va} and {vb} look alike: {a:?} vs {b:?}");
        }
    }
}

#[test]
fn dciodvfy_finds_no_errors_in_any_vendor_style() {
    let d = tmp();
    let mut cfg = small(2, 5);
    cfg.views = vec![View::MLO];
    for vendor in styled_vendors() {
        cfg.vendors = vec![vendor];
        let out = d.path().join(vendor.as_str());
        let gen = generate(&cfg, &out).unwrap();
        for g in &gen {
            let o = Command::new("dciodvfy")
                .arg(out.join(&g.row.path))
                .output()
                .expect("dciodvfy (Debian dicom3tools) must be installed");
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            assert!(
                text.contains("MammographyImageForPresentation"),
                "{vendor}: {text}"
            );
            let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("Error")).collect();
            assert!(errors.is_empty(), "{vendor}: {errors:?}");
        }
    }
}

#[test]
fn a_500_image_set_follows_its_configuration() {
    let d = tmp();
    let cfg = SynthConfig {
        count: 500,
        seed: 99,
        scale: 0.02,
        prevalence: 0.2,
        label_noise: 0.2,
        ..Default::default()
    };
    let gen = generate(&cfg, d.path()).unwrap();
    assert_eq!(gen.len(), 500);
    let exams: Vec<_> = gen.iter().step_by(4).collect();
    let n = exams.len() as f64;
    let tol = |p: f64| 3.0 * (p * (1.0 - p) / n).sqrt() + 0.01;
    for (i, d) in Density::ALL.iter().enumerate() {
        let f = exams.iter().filter(|g| g.density_true == *d).count() as f64 / n;
        let p = cfg.density_weights[i];
        assert!((f - p).abs() < tol(p), "density {d}: {f} vs {p}");
    }
    let cancer_exams = gen
        .chunks(4)
        .filter(|e| e.iter().any(|g| g.row.cancer == Some(true)))
        .count() as f64
        / n;
    assert!(
        (cancer_exams - 0.2).abs() < tol(0.2),
        "prevalence {cancer_exams}"
    );
    let k = styled_vendors().len() as f64;
    for v in styled_vendors() {
        let f = exams.iter().filter(|g| g.row.vendor == Some(v)).count() as f64 / n;
        assert!((f - 1.0 / k).abs() < tol(1.0 / k), "vendor {v}: {f}");
    }
    let cc = gen.iter().filter(|g| g.row.view == Some(View::CC)).count();
    assert_eq!(cc, 250);
    let flipped = gen
        .iter()
        .filter(|g| g.row.density != Some(g.density_true))
        .count() as f64
        / 500.0;
    assert!((flipped - 0.2).abs() < 0.06, "label noise {flipped}");
    // flips go to adjacent classes only
    for g in &gen {
        let (a, b) = (
            g.row.density.unwrap().index() as i32,
            g.density_true.index() as i32,
        );
        assert!((a - b).abs() <= 1);
    }
}

#[test]
fn preprocessing_crop_keeps_the_whole_breast_for_every_vendor_and_view() {
    use mammo_edge::ingest::preprocess::{preprocess, PreprocessConfig};
    for vendor in styled_vendors() {
        let d = tmp();
        let cfg = SynthConfig {
            vendors: vec![vendor],
            density_weights: [0.0, 0.0, 0.0, 1.0],
            ..small(8, 17)
        };
        let gen = generate(&cfg, d.path()).unwrap();
        for g in &gen {
            let m = read(&d.path().join(&g.row.path));
            let p = preprocess(&m, &PreprocessConfig::default()).unwrap();
            let mask = image::open(d.path().join(g.row.mask_path.as_ref().unwrap()))
                .unwrap()
                .into_luma8();
            let (mut x0, mut y0, mut x1, mut y1) = (u32::MAX, u32::MAX, 0, 0);
            for (x, y, px) in mask.enumerate_pixels() {
                if px.0[0] >= MASK_BREAST {
                    x0 = x0.min(x);
                    y0 = y0.min(y);
                    x1 = x1.max(x + 1);
                    y1 = y1.max(y + 1);
                }
            }
            let c = p.geometry.crop;
            let slack = (m.image.width.max(m.image.height) / 50) as u32;
            assert!(
                c.x0 as u32 <= x0 + slack
                    && c.x1 as u32 + slack >= x1
                    && c.y0 as u32 <= y0 + slack
                    && c.y1 as u32 + slack >= y1,
                "{vendor} {}: crop {c:?} misses breast [{x0}, {x1}) x [{y0}, {y1})",
                g.row.path
            );
            let area = (c.width() * c.height()) as f64;
            let breast_box = ((x1 - x0) * (y1 - y0)) as f64;
            assert!(
                area < 1.3 * breast_box,
                "{vendor} {}: crop {c:?} much larger than the breast",
                g.row.path
            );
            assert_eq!(
                p.geometry.flipped,
                g.row.laterality == Some(Laterality::R),
                "{}",
                g.row.path
            );
        }
    }
}

#[test]
fn masks_follow_their_image_through_preprocessing() {
    use mammo_edge::ingest::preprocess::{preprocess, warp, PreprocessConfig};
    // Dense tissue is brighter than fat: in model space the mask must sit on the bright tissue.
    let d = tmp();
    let cfg = SynthConfig {
        vendors: vec![mammo_edge::ingest::dicom::Vendor::Ge],
        density_weights: [0.0, 1.0, 0.0, 0.0],
        ..small(4, 8)
    };
    let gen = generate(&cfg, d.path()).unwrap();
    let pre = PreprocessConfig::default();
    for g in &gen {
        let m = read(&d.path().join(&g.row.path));
        let p = preprocess(&m, &pre).unwrap();
        let mask = image::open(d.path().join(g.row.mask_path.as_ref().unwrap()))
            .unwrap()
            .into_luma8();
        let dense: Vec<f32> = mask
            .pixels()
            .map(|px| (px.0[0] == MASK_DENSE) as u8 as f32)
            .collect();
        let warped = warp(&dense, m.image.width, m.image.height, &p.geometry, &pre).unwrap();
        let grey = p.grey_levels(&pre);
        let (mut on, mut n_on, mut off, mut n_off) = (0f32, 0f32, 0f32, 0f32);
        for (v, gl) in warped.iter().zip(&grey) {
            if *v > 0.9 {
                on += gl;
                n_on += 1.0;
            } else if *v < 0.1 && *gl > 0.05 {
                off += gl;
                n_off += 1.0;
            }
        }
        let (on, off) = (on / n_on, off / n_off);
        assert!(
            on > off + 0.1,
            "{}: dense {on} vs other tissue {off}",
            g.row.path
        );
        // the warped fraction of dense tissue matches the manifest within a few points
        let frac_src = dense.iter().sum::<f32>();
        let frac_dst = warped.iter().sum::<f32>() / (p.geometry.scale * p.geometry.scale);
        assert!(
            (frac_dst / frac_src - 1.0).abs() < 0.05,
            "{frac_dst} vs {frac_src}"
        );
    }
}

#[test]
fn sets_never_share_identifiers_and_never_overwrite() {
    let (a, b, c) = (tmp(), tmp(), tmp());
    let ga = generate(&small(8, 1), a.path()).unwrap();
    let gb = generate(&small(8, 2), b.path()).unwrap();
    let gc = generate(
        &SynthConfig {
            vendors: vec![mammo_edge::ingest::dicom::Vendor::Ge],
            ..small(8, 1)
        },
        c.path(),
    )
    .unwrap();
    let ids = |g: &[mammo_edge::synth::generator::Generated]| -> std::collections::HashSet<String> {
        g.iter()
            .flat_map(|r| {
                let sop = r
                    .row
                    .extra
                    .iter()
                    .find(|(k, _)| k == "sop_instance_uid")
                    .unwrap()
                    .1
                    .clone();
                [
                    r.row.patient_id.clone(),
                    r.row.study_uid.clone(),
                    sop,
                    r.row.path.clone(),
                ]
            })
            .collect()
    };
    let (ia, ib, ic) = (ids(&ga), ids(&gb), ids(&gc));
    assert!(
        ia.is_disjoint(&ib),
        "seeds 1 and 2 share identifiers: {:?}",
        ia.intersection(&ib).collect::<Vec<_>>()
    );
    assert!(
        ia.is_disjoint(&ic),
        "other vendors, same seed share identifiers"
    );
    // file names carry no patient ID
    assert!(ga.iter().all(|g| !g.row.path.contains(&g.row.patient_id)));
    // a second run into the same folder is refused, nothing is overwritten
    let before = files(a.path());
    let e = generate(&small(4, 3), a.path()).unwrap_err();
    assert!(e.to_string().contains("already holds"), "{e}");
    assert!(files(a.path()) == before);
}

#[test]
fn a_held_out_vendor_is_only_in_the_test_split() {
    use mammo_edge::ingest::dicom::Vendor;
    use mammo_edge::model::labels::Split;
    let d = tmp();
    let cfg = SynthConfig {
        count: 80,
        seed: 3,
        vendors: vec![
            Vendor::Hologic,
            Vendor::Ge,
            Vendor::Siemens,
            Vendor::ImsGiotto,
        ],
        hold_out: Some(Vendor::ImsGiotto),
        ..small(80, 3)
    };
    generate(&cfg, d.path()).unwrap();
    let rows = manifest::read(&d.path().join("manifest.csv")).unwrap();
    let held: Vec<_> = rows
        .iter()
        .filter(|r| r.vendor == Some(Vendor::ImsGiotto))
        .collect();
    assert_eq!(held.len(), 20, "vendors cycle: a quarter of 80 images");
    assert!(held.iter().all(|r| r.split == Split::Test));
    // the other vendors keep the 70/15/15 patient split, so training has rows of each
    for v in [Vendor::Hologic, Vendor::Ge, Vendor::Siemens] {
        assert!(rows
            .iter()
            .any(|r| r.vendor == Some(v) && r.split == Split::Train));
    }
    // the same set without hold-out differs only in the held vendor's split column
    let d2 = tmp();
    generate(
        &SynthConfig {
            hold_out: None,
            ..cfg
        },
        d2.path(),
    )
    .unwrap();
    let rows2 = manifest::read(&d2.path().join("manifest.csv")).unwrap();
    for (a, b) in rows.iter().zip(&rows2) {
        assert_eq!(a.path, b.path);
        if a.vendor != Some(Vendor::ImsGiotto) {
            assert_eq!(a.split, b.split);
        }
    }
}
