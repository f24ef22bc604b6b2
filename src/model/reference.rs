//! Reference distributions of a model's outputs on its validation images, per source (the
//! `mammo.drift_reference` metadata, docs/model-contract.md), and the population stability index
//! (PSI) that compares a window of the appliance's outputs with them (the drift monitor,
//! `crate::edge::drift`). Main items: [`DriftReference`], [`Observation`], [`psi`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `version` of the reference JSON this build writes and reads.
pub const REFERENCE_VERSION: u32 = 1;

/// Key of the reference pooled over every source (the fallback for a source the model has no
/// reference of, e.g. a vendor it never saw).
pub const POOLED: &str = "all";

/// Quantile bins of the cancer probability and the percent density: five, so that a window of
/// 100–200 images fills each with 20–40 (PSI of ten bins is dominated by sampling noise at that
/// size: its expectation under no drift is about (bins − 1) · (1/n + 1/m)).
pub const BINS: usize = 5;

/// The smallest number of images of a source for it to get its own reference (fewer: only the
/// pooled one covers it).
pub const MIN_SOURCE_IMAGES: usize = 30;

/// What the drift monitor keeps of one scored image.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    /// Cancer probability, 0–1.
    pub cancer: f32,
    /// Index of the most probable density class (0 = BI-RADS A … 3 = D).
    pub density: usize,
    /// Percent density, 0–100.
    pub percent_density: f32,
    /// The out-of-distribution flag.
    pub ood: bool,
}

/// Output distributions of one source on the validation images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceReference {
    /// Images it was computed from.
    pub images: usize,
    /// Share of images per cancer-probability bin ([`DriftReference::cancer_edges`]), sum 1.
    pub cancer: Vec<f64>,
    /// Share of images per most probable density class A–D, sum 1.
    pub density: [f64; 4],
    /// Share of images per percent-density bin, sum 1.
    pub percent_density: Vec<f64>,
    /// Share of images flagged out of distribution.
    pub ood_rate: f64,
}

/// The `mammo.drift_reference` metadata: bin edges shared by all sources (quantiles of the
/// pooled validation outputs) and the distributions per source (names as in the manifest's
/// `source` column or the DICOM vendor, plus [`POOLED`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftReference {
    pub version: u32,
    /// Which images: e.g. `val split of manifest.csv (tract on this file)`.
    pub images: String,
    /// Inner edges of the cancer-probability bins (`BINS − 1` increasing values): bin `i` holds
    /// `edges[i−1] ≤ x < edges[i]`.
    pub cancer_edges: Vec<f32>,
    /// Inner edges of the percent-density bins, points.
    pub percent_density_edges: Vec<f32>,
    pub sources: BTreeMap<String, SourceReference>,
}

/// Index of the bin of `x` among `edges` (inner edges, increasing).
pub fn bin(edges: &[f32], x: f32) -> usize {
    edges.iter().take_while(|&&e| x >= e).count()
}

/// Shares of `values` per bin of `edges` (`edges.len() + 1` bins); empty input: all zero.
pub fn shares(edges: &[f32], values: impl Iterator<Item = f32>) -> Vec<f64> {
    let mut counts = vec![0usize; edges.len() + 1];
    for v in values {
        counts[bin(edges, v)] += 1;
    }
    let n = counts.iter().sum::<usize>().max(1) as f64;
    counts.iter().map(|&c| c as f64 / n).collect()
}

/// Shares of the density classes A–D among `obs`.
pub fn density_shares(obs: &[Observation]) -> [f64; 4] {
    let mut s = [0f64; 4];
    for o in obs {
        s[o.density.min(3)] += 1.0;
    }
    let n = obs.len().max(1) as f64;
    s.map(|c| c / n)
}

/// Inner edges of `bins` quantile bins of `values` (repeated values may give repeated edges).
fn quantile_edges(values: &mut [f32], bins: usize) -> Vec<f32> {
    values.sort_by(f32::total_cmp);
    if values.is_empty() {
        return (1..bins).map(|i| i as f32 / bins as f32).collect();
    }
    (1..bins)
        .map(|i| values[(i * values.len() / bins).min(values.len() - 1)])
        .collect()
}

/// Population stability index of the shares `actual` (a window of `n_actual` images) against
/// `expected` (`n_expected` images): Σ (a − e) · ln(a / e), with each share smoothed as
/// (count + 0.5) / (n + 0.5 · bins) so an empty bin gives a finite value. 0: the same
/// distribution; the usual reading: < 0.1 stable, 0.1–0.25 moderate, > 0.25 a shift. Both
/// slices have the same length.
pub fn psi(actual: &[f64], n_actual: usize, expected: &[f64], n_expected: usize) -> f64 {
    let k = actual.len() as f64;
    let smooth = |s: f64, n: usize| (s * n as f64 + 0.5) / (n as f64 + 0.5 * k);
    actual
        .iter()
        .zip(expected)
        .map(|(&a, &e)| {
            let (a, e) = (smooth(a, n_actual), smooth(e, n_expected));
            (a - e) * (a / e).ln()
        })
        .sum()
}

impl DriftReference {
    /// The reference of `scored` (source name, observation) pairs: edges from the pooled
    /// values, one [`SourceReference`] per source with at least [`MIN_SOURCE_IMAGES`] images, and
    /// the pooled one. `None` when `scored` is empty.
    pub fn build(scored: &[(String, Observation)], images: &str) -> Option<DriftReference> {
        if scored.is_empty() {
            return None;
        }
        let mut c: Vec<f32> = scored.iter().map(|(_, o)| o.cancer).collect();
        let mut p: Vec<f32> = scored.iter().map(|(_, o)| o.percent_density).collect();
        let mut r = DriftReference {
            version: REFERENCE_VERSION,
            images: images.to_string(),
            cancer_edges: quantile_edges(&mut c, BINS),
            percent_density_edges: quantile_edges(&mut p, BINS),
            sources: BTreeMap::new(),
        };
        let mut by_source: BTreeMap<&str, Vec<Observation>> = BTreeMap::new();
        for (s, o) in scored {
            by_source.entry(s.as_str()).or_default().push(*o);
        }
        let all: Vec<Observation> = scored.iter().map(|(_, o)| *o).collect();
        for (name, obs) in by_source {
            if obs.len() >= MIN_SOURCE_IMAGES && name != POOLED {
                let s = r.summarise(&obs);
                r.sources.insert(name.to_string(), s);
            }
        }
        let pooled = r.summarise(&all);
        r.sources.insert(POOLED.into(), pooled);
        Some(r)
    }

    /// The distributions of `obs` in this reference's bins.
    pub fn summarise(&self, obs: &[Observation]) -> SourceReference {
        SourceReference {
            images: obs.len(),
            cancer: shares(&self.cancer_edges, obs.iter().map(|o| o.cancer)),
            density: density_shares(obs),
            percent_density: shares(
                &self.percent_density_edges,
                obs.iter().map(|o| o.percent_density),
            ),
            ood_rate: obs.iter().filter(|o| o.ood).count() as f64 / obs.len().max(1) as f64,
        }
    }

    /// The reference for `source` (its own when the model has one, else [`POOLED`]), with its
    /// name. `None` only for a reference without the pooled entry (not written by this build).
    pub fn for_source(&self, source: &str) -> Option<(&str, &SourceReference)> {
        self.sources
            .get_key_value(source)
            .or_else(|| self.sources.get_key_value(POOLED))
            .map(|(k, v)| (k.as_str(), v))
    }

    /// Check the shapes (bins, edges, shares); the error says what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.version != REFERENCE_VERSION {
            return Err(format!(
                "version {} is not understood (this appliance reads {REFERENCE_VERSION})",
                self.version
            ));
        }
        let increasing = |e: &[f32]| e.windows(2).all(|w| w[0] <= w[1]);
        if !increasing(&self.cancer_edges) || !increasing(&self.percent_density_edges) {
            return Err("bin edges are not increasing".into());
        }
        if !self.sources.contains_key(POOLED) {
            return Err(format!("no pooled reference `{POOLED}`"));
        }
        for (name, s) in &self.sources {
            if s.cancer.len() != self.cancer_edges.len() + 1
                || s.percent_density.len() != self.percent_density_edges.len() + 1
                || s.images == 0
            {
                return Err(format!("source {name}: bins do not match the edges"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(cancer: f32, density: usize, pd: f32) -> Observation {
        Observation {
            cancer,
            density,
            percent_density: pd,
            ood: false,
        }
    }

    #[test]
    fn psi_is_zero_for_the_same_shares_and_grows_with_the_shift() {
        let e = [0.2, 0.2, 0.2, 0.2, 0.2];
        assert!(psi(&e, 100, &e, 100).abs() < 1e-12);
        let a = [0.1, 0.1, 0.2, 0.3, 0.3];
        let b = [0.0, 0.0, 0.0, 0.5, 0.5];
        let (pa, pb) = (psi(&a, 100, &e, 100), psi(&b, 100, &e, 100));
        // (a − e) ln(a/e) summed: 2·0.1·ln2 + 2·0.1·ln1.5 ≈ 0.2198 before smoothing
        assert!((pa - 0.2198).abs() < 0.02, "{pa}");
        assert!(pb > 1.0 && pb.is_finite(), "{pb}");
    }

    #[test]
    fn build_bins_by_pooled_quantiles_and_keeps_sources_with_enough_images() {
        let mut scored = Vec::new();
        for i in 0..100 {
            scored.push(("a".to_string(), obs(i as f32 / 100.0, i % 4, i as f32)));
        }
        for _ in 0..10 {
            scored.push(("b".to_string(), obs(0.5, 0, 50.0)));
        }
        let r = DriftReference::build(&scored, "test").unwrap();
        assert_eq!(r.cancer_edges.len(), BINS - 1);
        assert!(r.validate().is_ok());
        assert!(r.sources.contains_key("a") && !r.sources.contains_key("b"));
        assert_eq!(r.sources[POOLED].images, 110);
        assert_eq!(r.for_source("b").unwrap().0, POOLED);
        let a = &r.sources["a"];
        assert!((a.cancer.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        assert_eq!(a.density, [0.25; 4]);
    }
}
