//! Evaluation metrics (plain Rust, no tensors): ROC AUC (Mann–Whitney U with ties), bootstrap
//! confidence intervals, macro-F1, linearly weighted Cohen's kappa (Cohen, Psychol. Bull. 70(4),
//! 1968), mean absolute error, Dice, Spearman's rank correlation.

use crate::synth::SplitMix64;

/// Area under the ROC curve of `scores` for binary `labels`: the probability that a random
/// positive scores above a random negative (ties count ½). `None` without both classes.
pub fn auc(scores: &[f64], labels: &[bool]) -> Option<f64> {
    if scores.iter().any(|s| !s.is_finite()) {
        return None;
    }
    let ranks = ranks(scores);
    let n_pos = labels.iter().filter(|&&l| l).count() as f64;
    let n_neg = labels.len() as f64 - n_pos;
    if n_pos == 0.0 || n_neg == 0.0 {
        return None;
    }
    let sum_pos: f64 = ranks
        .iter()
        .zip(labels)
        .filter(|(_, &l)| l)
        .map(|(r, _)| r)
        .sum();
    Some((sum_pos - n_pos * (n_pos + 1.0) / 2.0) / (n_pos * n_neg))
}

/// Ranks 1..n of `v`, ties given their average rank.
fn ranks(v: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut ranks = vec![0f64; v.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
            j += 1;
        }
        let r = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            ranks[k] = r;
        }
        i = j + 1;
    }
    ranks
}

/// Spearman's rank correlation of `a` and `b` (Pearson's r of their tie-averaged ranks); `None`
/// with fewer than 3 pairs or a constant side.
pub fn spearman(a: &[f64], b: &[f64]) -> Option<f64> {
    let n = a.len().min(b.len());
    if n < 3 || a.iter().chain(b).any(|v| !v.is_finite()) {
        return None;
    }
    let (ra, rb) = (ranks(&a[..n]), ranks(&b[..n]));
    let mean = (n as f64 + 1.0) / 2.0;
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for i in 0..n {
        let (x, y) = (ra[i] - mean, rb[i] - mean);
        sab += x * y;
        saa += x * x;
        sbb += y * y;
    }
    (saa > 0.0 && sbb > 0.0).then(|| sab / (saa * sbb).sqrt())
}

/// AUC with a percentile bootstrap 95 % confidence interval (`rounds` resamples of the images,
/// seeded).
pub fn auc_ci(
    scores: &[f64],
    labels: &[bool],
    rounds: usize,
    seed: u64,
) -> Option<(f64, f64, f64)> {
    let each: Vec<usize> = (0..scores.len()).collect();
    auc_ci_clustered(scores, labels, &each, rounds, seed)
}

/// As [`auc_ci`], resampling whole clusters (`cluster[i]`: the patient of image i), so images
/// of one woman stay together and the interval is not too narrow.
pub fn auc_ci_clustered(
    scores: &[f64],
    labels: &[bool],
    cluster: &[usize],
    rounds: usize,
    seed: u64,
) -> Option<(f64, f64, f64)> {
    let point = auc(scores, labels)?;
    let mut rng = SplitMix64::new(seed);
    let mut members: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
    for (i, &c) in cluster.iter().enumerate().take(scores.len()) {
        members.entry(c).or_default().push(i);
    }
    let groups: Vec<Vec<usize>> = members.into_values().collect();
    let n = groups.len();
    let mut stats = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let pick: Vec<usize> = (0..n)
            .flat_map(|_| {
                groups[(rng.uniform() * n as f64) as usize % n]
                    .iter()
                    .copied()
            })
            .collect();
        let s: Vec<f64> = pick.iter().map(|&i| scores[i]).collect();
        let l: Vec<bool> = pick.iter().map(|&i| labels[i]).collect();
        if let Some(a) = auc(&s, &l) {
            stats.push(a);
        }
    }
    if stats.is_empty() {
        return Some((point, point, point));
    }
    stats.sort_by(f64::total_cmp);
    let q = |p: f64| stats[((p * (stats.len() - 1) as f64).round() as usize).min(stats.len() - 1)];
    Some((point, q(0.025), q(0.975)))
}

/// Macro-averaged F1 over `k` classes present in truth or prediction.
pub fn macro_f1(truth: &[usize], pred: &[usize], k: usize) -> f64 {
    let mut f1s = Vec::new();
    for c in 0..k {
        let tp = truth
            .iter()
            .zip(pred)
            .filter(|(t, p)| **t == c && **p == c)
            .count() as f64;
        let fp = truth
            .iter()
            .zip(pred)
            .filter(|(t, p)| **t != c && **p == c)
            .count() as f64;
        let fn_ = truth
            .iter()
            .zip(pred)
            .filter(|(t, p)| **t == c && **p != c)
            .count() as f64;
        if tp + fp + fn_ > 0.0 {
            f1s.push(2.0 * tp / (2.0 * tp + fp + fn_));
        }
    }
    if f1s.is_empty() {
        0.0
    } else {
        f1s.iter().sum::<f64>() / f1s.len() as f64
    }
}

/// Linearly weighted Cohen's kappa for ordinal classes 0..k.
pub fn weighted_kappa(truth: &[usize], pred: &[usize], k: usize) -> f64 {
    let n = truth.len() as f64;
    if n == 0.0 || k < 2 {
        return 0.0;
    }
    let mut obs = vec![vec![0f64; k]; k];
    for (&t, &p) in truth.iter().zip(pred) {
        obs[t.min(k - 1)][p.min(k - 1)] += 1.0;
    }
    let rows: Vec<f64> = obs.iter().map(|r| r.iter().sum()).collect();
    let cols: Vec<f64> = (0..k).map(|j| obs.iter().map(|r| r[j]).sum()).collect();
    let (mut o, mut e) = (0.0, 0.0);
    for i in 0..k {
        for j in 0..k {
            let w = (i as f64 - j as f64).abs() / (k - 1) as f64;
            o += w * obs[i][j] / n;
            e += w * rows[i] * cols[j] / (n * n);
        }
    }
    if e == 0.0 {
        1.0
    } else {
        1.0 - o / e
    }
}

/// Mean absolute error.
pub fn mae(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f64>() / a.len().max(1) as f64
}

/// Dice of a soft prediction against a soft target (same length).
pub fn dice(p: &[f32], t: &[f32]) -> f64 {
    let inter: f64 = p.iter().zip(t).map(|(a, b)| (*a * *b) as f64).sum();
    let s: f64 = p.iter().chain(t).map(|&v| v as f64).sum();
    (2.0 * inter + 1e-6) / (s + 1e-6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_known_values() {
        assert_eq!(
            auc(&[0.1, 0.4, 0.35, 0.8], &[false, false, true, true]),
            Some(0.75)
        );
        assert_eq!(auc(&[1.0, 2.0], &[false, true]), Some(1.0));
        assert_eq!(auc(&[0.5, 0.5], &[false, true]), Some(0.5));
        assert_eq!(auc(&[0.5, 0.7], &[true, true]), None);
    }

    #[test]
    fn kappa_and_f1() {
        let t = [0, 1, 2, 3, 0, 1, 2, 3];
        assert!((weighted_kappa(&t, &t, 4) - 1.0).abs() < 1e-12);
        assert!((macro_f1(&t, &t, 4) - 1.0).abs() < 1e-12);
        let p = [1, 2, 3, 0, 1, 2, 3, 0];
        assert!(weighted_kappa(&t, &p, 4) < 0.0);
        let ci = auc_ci(
            &[0.1, 0.2, 0.8, 0.9, 0.3, 0.7],
            &[false, false, true, true, false, true],
            200,
            1,
        )
        .unwrap();
        assert!(ci.1 <= ci.0 && ci.0 <= ci.2);
    }

    #[test]
    fn spearman_known_values_and_clustered_interval() {
        let a = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert!((spearman(&a, &[2.0, 4.0, 6.0, 8.0, 100.0]).unwrap() - 1.0).abs() < 1e-12);
        assert!((spearman(&a, &[5.0, 4.0, 3.0, 2.0, 1.0]).unwrap() + 1.0).abs() < 1e-12);
        // ties: ranks (1.5, 1.5, 3) vs (1, 2, 3) -> r = 0.866
        let r = spearman(&[0.0, 0.0, 1.0], &[1.0, 2.0, 3.0]).unwrap();
        assert!((r - 0.75f64.sqrt()).abs() < 1e-12, "{r}");
        assert_eq!(spearman(&[1.0, 1.0, 1.0], &[1.0, 2.0, 3.0]), None);
        // two copies of each patient: the clustered interval is wider than the per-image one
        let s = [0.1, 0.1, 0.4, 0.4, 0.35, 0.35, 0.8, 0.8, 0.6, 0.6, 0.3, 0.3];
        let l = [
            false, false, false, false, true, true, true, true, true, true, false, false,
        ];
        let c = [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5];
        let per_image = auc_ci(&s, &l, 500, 3).unwrap();
        let per_patient = auc_ci_clustered(&s, &l, &c, 500, 3).unwrap();
        assert_eq!(per_image.0, per_patient.0);
        assert!(per_patient.2 - per_patient.1 > per_image.2 - per_image.1);
    }
}
