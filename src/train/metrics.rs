//! Evaluation metrics (plain Rust, no tensors): ROC AUC (Mann–Whitney U with ties), bootstrap
//! confidence intervals, macro-F1, linearly weighted Cohen's kappa (Cohen, Psychol. Bull. 70(4),
//! 1968), mean absolute error, Dice.

use crate::synth::SplitMix64;

/// Area under the ROC curve of `scores` for binary `labels`: the probability that a random
/// positive scores above a random negative (ties count ½). `None` without both classes.
pub fn auc(scores: &[f64], labels: &[bool]) -> Option<f64> {
    if scores.iter().any(|s| !s.is_finite()) {
        return None;
    }
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // average ranks over ties
    let mut ranks = vec![0f64; scores.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        let r = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            ranks[k] = r;
        }
        i = j + 1;
    }
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

/// AUC with a percentile bootstrap 95 % confidence interval (`rounds` resamples, seeded).
pub fn auc_ci(
    scores: &[f64],
    labels: &[bool],
    rounds: usize,
    seed: u64,
) -> Option<(f64, f64, f64)> {
    let point = auc(scores, labels)?;
    let mut rng = SplitMix64::new(seed);
    let n = scores.len();
    let mut stats = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let pick: Vec<usize> = (0..n)
            .map(|_| (rng.uniform() * n as f64) as usize % n)
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
}
