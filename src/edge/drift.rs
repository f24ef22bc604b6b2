//! The drift monitor at the edge (docs/drift.md): per source (DICOM Manufacturer +
//! ManufacturerModelName) a rolling window of the model's outputs, compared after each image
//! with the model's reference distributions (`mammo.drift_reference`, [`crate::model::reference`])
//! by the population stability index per output and the out-of-distribution rate; the result
//! is the retained `drift` message of the source, and an `alert` when a threshold is crossed
//! (raised) or everything is back under 0.8 of its threshold (cleared). The windows and alert
//! states live in the state database ([`crate::edge::store::DriftRecord`]) so a restart resumes
//! them. Main items: [`Monitor`], [`DriftStatus`], [`source_id`].

use std::collections::{HashMap, VecDeque};

use serde::Serialize;

use crate::edge::config::DriftConfig;
use crate::edge::store::{DriftRecord, DriftWindow};
use crate::model::reference::{density_shares, psi, shares, DriftReference, Observation};

/// A cleared alert needs every value under this share of its threshold (hysteresis: a value
/// hovering at the threshold does not raise and clear an alert image after image).
pub const CLEAR_RATIO: f64 = 0.8;

/// The topic leaf of a source: `<manufacturer>-<model name>` in lower case, every run of
/// characters other than ASCII letters and digits as one `-`, at most 64 characters; `unknown`
/// when nothing is left. MQTT wildcards and `/` never appear in it.
pub fn source_id(manufacturer: &str, model_name: &str) -> String {
    let mut out = String::new();
    for c in format!("{manufacturer} {model_name}").chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    let mut out: String = out.trim_end_matches('-').chars().take(64).collect();
    while out.ends_with('-') {
        out.pop();
    }
    if out.is_empty() {
        "unknown".into()
    } else {
        out
    }
}

/// What the monitor keeps of an image's result: cancer probability, most probable density
/// class, percent density, OOD flag.
pub fn observation(r: &crate::model::score::ImageResult) -> Observation {
    let density = r
        .density_probabilities
        .iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &p)| {
            if p > bv {
                (i, p)
            } else {
                (bi, bv)
            }
        })
        .0;
    Observation {
        cancer: r.cancer_probability,
        density,
        percent_density: r.percent_density,
        ood: r.ood,
    }
}

/// The source of a drift message.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Source {
    /// [`source_id`]: the topic leaf.
    pub id: String,
    /// DICOM Manufacturer (0008,0070) and ManufacturerModelName (0008,1090) as read.
    pub manufacturer: String,
    pub manufacturer_model_name: String,
    /// The vendor vocabulary's name of the Manufacturer (`hologic`, `ge`, …).
    pub vendor: String,
}

/// Which reference a window is compared with.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReferenceUsed {
    /// The reference's source name: the vendor when the model has a reference of it, else
    /// `all` (pooled over every validation image: a vendor the model never saw).
    pub source: String,
    /// Validation images behind it.
    pub images: usize,
}

/// The window's size and fill.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct WindowInfo {
    /// Images in the window now.
    pub images: usize,
    /// `drift.window`.
    pub size: usize,
    /// `drift.min_images`: below it the window is not judged.
    pub min_images: usize,
    /// Whether it is judged (images ≥ min_images).
    pub judged: bool,
}

/// PSI of each output; `None` without a reference.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Psi {
    pub cancer_probability: Option<f64>,
    pub density: Option<f64>,
    pub percent_density: Option<f64>,
}

/// Share of the window flagged out of distribution, and of the reference.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct OodRate {
    pub window: f64,
    pub reference: Option<f64>,
}

/// One output's distribution in the window and in the reference (shares per bin).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Distribution {
    /// Inner bin edges (none for the density classes A–D).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub edges: Vec<f32>,
    pub window: Vec<f64>,
    pub reference: Option<Vec<f64>>,
}

/// The distributions behind the PSI values.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Distributions {
    pub cancer_probability: Distribution,
    pub density: Distribution,
    pub percent_density: Distribution,
}

/// The thresholds in force (`[drift]`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Thresholds {
    pub psi: f64,
    pub ood_rate: f64,
}

/// The state of one source's window: the body of the `mammo-edge.drift/1` message (the
/// envelope — schema, result_id, produced_at, model — is added by
/// [`crate::edge::message::Messages::drift`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DriftStatus {
    pub source: Source,
    /// `None`: the model carries no `mammo.drift_reference` (only the OOD rate is judged).
    pub reference: Option<ReferenceUsed>,
    pub window: WindowInfo,
    pub psi: Psi,
    pub ood_rate: OodRate,
    pub thresholds: Thresholds,
    /// Whether the source is alerted (after this image).
    pub alert: bool,
    /// What is over its threshold now, in words (empty when nothing is).
    pub reasons: Vec<String>,
    pub distributions: Distributions,
}

/// What one image does to the monitor, computed before the commit and applied after it
/// ([`Monitor::preview`], [`Monitor::apply`]).
#[derive(Debug, Clone)]
pub struct Update {
    /// What the state database records in the result's transaction.
    pub record: DriftRecord,
    /// The source's status with this image counted.
    pub status: DriftStatus,
    /// `Some(true)`: the alert is raised by this image; `Some(false)`: cleared; `None`: no change.
    pub change: Option<bool>,
}

#[derive(Debug, Clone, Default)]
struct Window {
    obs: VecDeque<Observation>,
    alerting: bool,
}

/// The windows of the running model, by (Manufacturer, ManufacturerModelName).
#[derive(Debug, Clone)]
pub struct Monitor {
    cfg: DriftConfig,
    reference: Option<DriftReference>,
    windows: HashMap<(String, String), Window>,
}

impl Monitor {
    /// A monitor for a model with `reference` (its `mammo.drift_reference`), resuming the
    /// `stored` windows ([`crate::edge::store::Store::drift_windows`]).
    pub fn new(
        cfg: DriftConfig,
        reference: Option<DriftReference>,
        stored: Vec<DriftWindow>,
    ) -> Monitor {
        let mut windows = HashMap::new();
        for w in stored {
            let mut obs: VecDeque<Observation> = w.observations.into();
            while obs.len() > cfg.window {
                obs.pop_front();
            }
            windows.insert(
                (w.manufacturer, w.model_name),
                Window {
                    obs,
                    alerting: w.alerting,
                },
            );
        }
        Monitor {
            cfg,
            reference,
            windows,
        }
    }

    /// Sources with a window.
    pub fn sources(&self) -> usize {
        self.windows.len()
    }

    /// The update of counting `o`, an image of `manufacturer` / `model_name` (vendor name
    /// `vendor`), without changing the monitor.
    pub fn preview(
        &self,
        manufacturer: &str,
        model_name: &str,
        vendor: &str,
        o: Observation,
    ) -> Update {
        let key = (manufacturer.to_string(), model_name.to_string());
        let old = self.windows.get(&key).cloned().unwrap_or_default();
        let mut obs: Vec<Observation> = old.obs.iter().copied().collect();
        obs.push(o);
        if obs.len() > self.cfg.window {
            obs.drain(..obs.len() - self.cfg.window);
        }
        let source = Source {
            id: source_id(manufacturer, model_name),
            manufacturer: manufacturer.into(),
            manufacturer_model_name: model_name.into(),
            vendor: vendor.into(),
        };
        let status = judge(
            &self.cfg,
            self.reference.as_ref(),
            source,
            &obs,
            old.alerting,
        );
        let change = (status.alert != old.alerting).then_some(status.alert);
        Update {
            record: DriftRecord {
                manufacturer: key.0,
                model_name: key.1,
                observation: o,
                window: self.cfg.window,
                alerting: status.alert,
            },
            status,
            change,
        }
    }

    /// Apply `u` (once its record is committed).
    pub fn apply(&mut self, u: &Update) {
        let w = self
            .windows
            .entry((u.record.manufacturer.clone(), u.record.model_name.clone()))
            .or_default();
        w.obs.push_back(u.record.observation);
        while w.obs.len() > self.cfg.window {
            w.obs.pop_front();
        }
        w.alerting = u.record.alerting;
    }
}

/// The status of the window `obs` of `source`, alerted before iff `was_alerting`.
fn judge(
    cfg: &DriftConfig,
    reference: Option<&DriftReference>,
    source: Source,
    obs: &[Observation],
    was_alerting: bool,
) -> DriftStatus {
    let n = obs.len();
    let judged = n >= cfg.min_images;
    let ood_window = obs.iter().filter(|o| o.ood).count() as f64 / n.max(1) as f64;
    let found = reference.and_then(|r| r.for_source(&source.vendor).map(|s| (r, s)));
    let (edges_c, edges_p) = reference
        .map(|r| (r.cancer_edges.clone(), r.percent_density_edges.clone()))
        .unwrap_or_default();
    let win_c = shares(&edges_c, obs.iter().map(|o| o.cancer));
    let win_d = density_shares(obs).to_vec();
    let win_p = shares(&edges_p, obs.iter().map(|o| o.percent_density));
    let (psi_v, ood_ref, used) = match found {
        Some((_, (name, s))) => (
            Psi {
                cancer_probability: Some(psi(&win_c, n, &s.cancer, s.images)),
                density: Some(psi(&win_d, n, &s.density, s.images)),
                percent_density: Some(psi(&win_p, n, &s.percent_density, s.images)),
            },
            Some(s.ood_rate),
            Some(ReferenceUsed {
                source: name.to_string(),
                images: s.images,
            }),
        ),
        None => (
            Psi {
                cancer_probability: None,
                density: None,
                percent_density: None,
            },
            None,
            None,
        ),
    };
    let named = [
        ("cancer_probability", psi_v.cancer_probability),
        ("density", psi_v.density),
        ("percent_density", psi_v.percent_density),
    ];
    let mut reasons = Vec::new();
    for (name, v) in named {
        if let Some(v) = v.filter(|&v| v > cfg.psi_alert) {
            reasons.push(format!("PSI of {name} {v:.3} > {}", cfg.psi_alert));
        }
    }
    if ood_window > cfg.ood_rate_alert {
        reasons.push(format!(
            "out-of-distribution rate {ood_window:.3} > {}",
            cfg.ood_rate_alert
        ));
    }
    let all_low = named
        .iter()
        .all(|(_, v)| v.is_none_or(|v| v < CLEAR_RATIO * cfg.psi_alert))
        && ood_window < CLEAR_RATIO * cfg.ood_rate_alert;
    let alert = if !judged {
        was_alerting && !all_low
    } else if was_alerting {
        !all_low
    } else {
        !reasons.is_empty()
    };
    let reference_shares = |f: fn(&crate::model::reference::SourceReference) -> Vec<f64>| {
        found.map(|(_, (_, s))| f(s))
    };
    DriftStatus {
        source,
        reference: used,
        window: WindowInfo {
            images: n,
            size: cfg.window,
            min_images: cfg.min_images,
            judged,
        },
        psi: psi_v,
        ood_rate: OodRate {
            window: ood_window,
            reference: ood_ref,
        },
        thresholds: Thresholds {
            psi: cfg.psi_alert,
            ood_rate: cfg.ood_rate_alert,
        },
        alert,
        reasons,
        distributions: Distributions {
            cancer_probability: Distribution {
                edges: edges_c,
                window: win_c,
                reference: reference_shares(|s| s.cancer.clone()),
            },
            density: Distribution {
                edges: Vec::new(),
                window: win_d,
                reference: reference_shares(|s| s.density.to_vec()),
            },
            percent_density: Distribution {
                edges: edges_p,
                window: win_p,
                reference: reference_shares(|s| s.percent_density.clone()),
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(cancer: f32, density: usize, pd: f32, ood: bool) -> Observation {
        Observation {
            cancer,
            density,
            percent_density: pd,
            ood,
        }
    }

    fn reference() -> DriftReference {
        let scored: Vec<_> = (0..200)
            .map(|i| {
                (
                    "hologic".to_string(),
                    o(
                        (i % 100) as f32 / 100.0,
                        i % 4,
                        (i % 50) as f32 * 2.0,
                        false,
                    ),
                )
            })
            .collect();
        DriftReference::build(&scored, "test").unwrap()
    }

    #[test]
    fn source_ids_are_topic_safe() {
        assert_eq!(
            source_id("HOLOGIC, Inc.", "Selenia Dimensions"),
            "hologic-inc-selenia-dimensions"
        );
        assert_eq!(source_id("GE MEDICAL SYSTEMS", ""), "ge-medical-systems");
        assert_eq!(source_id("#/+", "  "), "unknown");
    }

    #[test]
    fn a_like_window_stays_quiet_a_shifted_one_alerts_and_clears_with_hysteresis() {
        let cfg = DriftConfig {
            window: 100,
            min_images: 50,
            ..Default::default()
        };
        let mut m = Monitor::new(cfg, Some(reference()), Vec::new());
        // the reference's values in a scrambled order: any prefix is spread alike
        let like = |i: usize| {
            o(
                ((i * 37) % 100) as f32 / 100.0,
                i % 4,
                ((i * 37) % 50) as f32 * 2.0,
                false,
            )
        };
        for i in 0..100 {
            let u = m.preview("HOLOGIC", "X", "hologic", like(i));
            assert_eq!(u.change, None, "image {i}: {:?}", u.status.reasons);
            m.apply(&u);
        }
        // every image now high cancer, density D, 95 %: alert once judged
        let mut raised = None;
        for i in 0..100 {
            let u = m.preview("HOLOGIC", "X", "hologic", o(0.99, 3, 95.0, false));
            if u.change == Some(true) {
                raised = Some((i, u.status.clone()));
            }
            m.apply(&u);
        }
        let (i, st) = raised.expect("an alert");
        assert!(i < 30, "raised after {i} shifted images");
        assert!(st.psi.cancer_probability.unwrap() > 0.25, "{st:?}");
        assert_eq!(st.reference.unwrap().source, "hologic");
        // like images again: cleared only once the shifted ones have left the window
        let mut cleared = None;
        for i in 0..100 {
            let u = m.preview("HOLOGIC", "X", "hologic", like(i));
            if u.change == Some(false) {
                cleared = Some(i);
            }
            assert_ne!(u.change, Some(true));
            m.apply(&u);
        }
        let i = cleared.expect("cleared");
        assert!(i > 50, "cleared after {i} like images");
        // an unknown vendor is compared with the pooled reference
        let u = m.preview("Acme", "Z", "other", o(0.5, 1, 40.0, false));
        assert_eq!(u.status.reference.unwrap().source, "all");
        assert!(!u.status.window.judged && !u.status.alert);
    }
}
