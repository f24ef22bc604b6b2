//! The exam rule (DESIGN.md, "Data flow (edge)"): per-breast and exam cancer scores, density
//! from the mean probabilities, completeness, triage and revisions.

use std::time::Duration;

use mammo_edge::edge::exam::{
    aggregate, next_revision, publish_due, ExamError, ImageScore, Triage,
};
use mammo_edge::edge::store::Store;
use mammo_edge::ingest::dicom::{Laterality, View};
use mammo_edge::model::labels::Density;
use serde_json::json;

use crate::util::tmp;

const THRESHOLD: f32 = 0.5;

fn img(l: Laterality, v: View, cancer: f32, density: [f32; 4], pd: f32) -> ImageScore {
    ImageScore {
        laterality: l,
        view: v,
        cancer_probability: cancer,
        density_probabilities: density,
        percent_density: pd,
        ood: false,
    }
}

const B: [f32; 4] = [0.1, 0.6, 0.2, 0.1];

fn four(cancers: [f32; 4]) -> Vec<ImageScore> {
    use Laterality::{L, R};
    use View::{CC, MLO};
    vec![
        img(L, CC, cancers[0], B, 30.0),
        img(L, MLO, cancers[1], B, 32.0),
        img(R, CC, cancers[2], B, 28.0),
        img(R, MLO, cancers[3], B, 30.0),
    ]
}

#[test]
fn complete_exam_below_threshold_is_routine() {
    let e = aggregate(&four([0.1, 0.2, 0.05, 0.3]), THRESHOLD, 1).unwrap();
    assert!(e.complete);
    assert_eq!(e.views_present, ["L-CC", "L-MLO", "R-CC", "R-MLO"]);
    assert!(e.views_missing.is_empty());
    assert_eq!(e.images, 4);
    assert_eq!(e.breasts.len(), 2);
    assert_eq!(e.breasts[0].laterality, Laterality::L);
    assert_eq!(e.breasts[0].cancer_probability, 0.2);
    assert_eq!(e.breasts[0].views, [View::CC, View::MLO]);
    assert_eq!(e.breasts[1].laterality, Laterality::R);
    assert_eq!(e.breasts[1].cancer_probability, 0.3);
    assert_eq!(e.cancer_probability, 0.3);
    assert!(!e.cancer_flag);
    assert_eq!(e.cancer_threshold, THRESHOLD);
    assert_eq!(e.density, Density::B);
    assert!(!e.dense_breasts);
    assert!((e.percent_density - 30.0).abs() < 1e-5);
    assert_eq!(e.triage, Triage::Routine);
    assert_eq!(e.revision, 1);
    let j = serde_json::to_value(&e).unwrap();
    assert_eq!(j["triage"], "routine");
    assert_eq!(j["density"], "B");
    assert_eq!(j["breasts"][1]["laterality"], "R");
    assert_eq!(j["breasts"][0]["views"], json!(["CC", "MLO"]));
}

#[test]
fn incomplete_exam_is_review_and_lists_missing_views() {
    let mut imgs = four([0.1, 0.2, 0.05, 0.3]);
    imgs.remove(3); // R-MLO missing
    let e = aggregate(&imgs, THRESHOLD, 1).unwrap();
    assert!(!e.complete);
    assert_eq!(e.views_present, ["L-CC", "L-MLO", "R-CC"]);
    assert_eq!(e.views_missing, ["R-MLO"]);
    assert_eq!(e.breasts[1].views, [View::CC]);
    assert_eq!(e.cancer_probability, 0.2);
    assert_eq!(e.triage, Triage::Review);
    // One breast only: the other breast is absent, not zero.
    let e = aggregate(&imgs[..2], THRESHOLD, 1).unwrap();
    assert_eq!(e.breasts.len(), 1);
    assert_eq!(e.views_missing, ["R-CC", "R-MLO"]);
}

#[test]
fn out_of_distribution_view_is_review() {
    let mut imgs = four([0.1, 0.2, 0.05, 0.3]);
    imgs[2].ood = true;
    let e = aggregate(&imgs, THRESHOLD, 1).unwrap();
    assert!(e.complete && e.ood);
    assert!(e.breasts[1].ood && !e.breasts[0].ood);
    assert_eq!(e.triage, Triage::Review);
}

#[test]
fn score_at_or_over_threshold_is_priority_even_when_incomplete_or_ood() {
    let e = aggregate(&four([0.1, 0.2, 0.5, 0.3]), THRESHOLD, 1).unwrap();
    assert_eq!(e.cancer_probability, 0.5, "at the threshold counts");
    assert!(e.cancer_flag);
    assert_eq!(e.triage, Triage::Priority);
    assert_eq!(e.breasts[1].cancer_probability, 0.5);

    let mut imgs = four([0.9, 0.2, 0.05, 0.3]);
    imgs[3].ood = true;
    imgs.remove(2);
    let e = aggregate(&imgs, THRESHOLD, 1).unwrap();
    assert_eq!(e.cancer_probability, 0.9);
    assert_eq!(e.triage, Triage::Priority);
}

#[test]
fn density_is_argmax_of_mean_probabilities_not_a_vote() {
    use Laterality::{L, R};
    use View::{CC, MLO};
    // Three views lean slightly to B, one is certain of D: a vote of per-view classes says B
    // (3 of 4), the mean of the probabilities says D (0.5125 against 0.30).
    let lean_b = [0.05, 0.40, 0.20, 0.35];
    let sure_d = [0.0, 0.0, 0.0, 1.0];
    let imgs = [
        img(L, CC, 0.1, lean_b, 40.0),
        img(L, MLO, 0.1, lean_b, 44.0),
        img(R, CC, 0.1, lean_b, 46.0),
        img(R, MLO, 0.1, sure_d, 90.0),
    ];
    let e = aggregate(&imgs, THRESHOLD, 1).unwrap();
    let expect = [0.0375, 0.30, 0.15, 0.5125];
    for (got, want) in e.density_probabilities.iter().zip(expect) {
        assert!((got - want).abs() < 1e-6, "{:?}", e.density_probabilities);
    }
    assert_eq!(e.density, Density::D);
    assert!(e.dense_breasts);
    assert!((e.percent_density - 55.0).abs() < 1e-4);

    // C is dense too; a tie goes to the lower class.
    let imgs = [
        img(L, CC, 0.1, [0.0, 0.0, 1.0, 0.0], 60.0),
        img(R, CC, 0.1, [0.0, 1.0, 0.0, 0.0], 40.0),
    ];
    let e = aggregate(&imgs, THRESHOLD, 1).unwrap();
    assert_eq!(e.density, Density::B);
    assert!(!e.dense_breasts);
    let e = aggregate(&imgs[..1], THRESHOLD, 1).unwrap();
    assert_eq!(e.density, Density::C);
    assert!(e.dense_breasts);
}

#[test]
fn only_cc_and_mlo_count_and_bad_input_is_refused() {
    use Laterality::L;
    let ml = img(L, View::ML, 0.99, [0.0, 0.0, 0.0, 1.0], 99.0);
    assert_eq!(
        aggregate(&[ml], THRESHOLD, 1),
        Err(ExamError::NoScoredViews)
    );
    assert_eq!(aggregate(&[], THRESHOLD, 1), Err(ExamError::NoScoredViews));
    let cc = img(L, View::CC, 0.1, B, 30.0);
    let e = aggregate(&[cc, ml], THRESHOLD, 1).unwrap();
    assert_eq!((e.images, e.cancer_probability), (1, 0.1));
    let nan = img(L, View::CC, f32::NAN, B, 30.0);
    assert!(matches!(
        aggregate(&[nan], THRESHOLD, 1),
        Err(ExamError::NotFinite {
            field: "cancer_probability",
            ..
        })
    ));
}

#[test]
fn a_later_image_republishes_with_the_next_revision() {
    assert_eq!(next_revision(None), 1);
    assert_eq!(next_revision(Some(0)), 1);
    assert_eq!(next_revision(Some(4)), 5);
    assert!(publish_due(true, Duration::ZERO, Duration::from_secs(300)));
    assert!(!publish_due(
        false,
        Duration::from_secs(299),
        Duration::from_secs(300)
    ));
    assert!(publish_due(
        false,
        Duration::from_secs(300),
        Duration::from_secs(300)
    ));

    // Through the store: first publication (3 views, quiet) is revision 1 and review; the late
    // fourth view re-publishes as revision 2, complete and routine.
    let dir = tmp();
    let mut s = Store::open(dir.path(), 3).unwrap();
    let imgs = four([0.1, 0.2, 0.05, 0.3]);
    let rev = |s: &Store| next_revision(s.exam_state("1.2.3").unwrap().map(|e| e.revision));
    let e1 = aggregate(&imgs[..3], THRESHOLD, rev(&s)).unwrap();
    assert_eq!((e1.revision, e1.triage), (1, Triage::Review));
    s.commit_exam("1.2.3", e1.revision, &e1, &[]).unwrap();
    let e2 = aggregate(&imgs, THRESHOLD, rev(&s)).unwrap();
    assert_eq!(
        (e2.revision, e2.triage, e2.complete),
        (2, Triage::Routine, true)
    );
    s.commit_exam("1.2.3", e2.revision, &e2, &[]).unwrap();
    let st = s.exam_state("1.2.3").unwrap().unwrap();
    assert_eq!(st.revision, 2);
    let published: serde_json::Value =
        serde_json::from_str(st.published_json.as_deref().unwrap()).unwrap();
    assert_eq!(published["revision"], 2);
    assert_eq!(published["complete"], true);
}
