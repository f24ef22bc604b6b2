//! Label definitions shared by the phantom generator, the trainer and the daemon: BI-RADS breast
//! density classes and their percent-density rule, and the dataset split names.

use serde::{Deserialize, Serialize};
use std::fmt;

/// BI-RADS breast composition A–D.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Density {
    /// Almost entirely fatty.
    A,
    /// Scattered areas of fibroglandular density.
    B,
    /// Heterogeneously dense.
    C,
    /// Extremely dense.
    D,
}

impl Density {
    pub const ALL: [Density; 4] = [Density::A, Density::B, Density::C, Density::D];

    /// Class from percent density (0–100 %) by the BI-RADS 4th edition quartiles (ACR BI-RADS Atlas,
    /// 4th ed., 2003): A < 25 %, B 25–50 %, C 50–75 %, D ≥ 75 %.
    pub fn from_percent(pd: f64) -> Density {
        if pd < 25.0 {
            Density::A
        } else if pd < 50.0 {
            Density::B
        } else if pd < 75.0 {
            Density::C
        } else {
            Density::D
        }
    }

    /// Percent-density interval `[lo, hi)` of the class, %.
    pub fn range(self) -> (f64, f64) {
        match self {
            Density::A => (0.0, 25.0),
            Density::B => (25.0, 50.0),
            Density::C => (50.0, 75.0),
            Density::D => (75.0, 100.0),
        }
    }

    /// 0 for A … 3 for D (the model's class index).
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn from_index(i: usize) -> Option<Density> {
        Density::ALL.get(i).copied()
    }

    /// Parse `A`–`D` (case-insensitive, trimmed).
    pub fn parse(s: &str) -> Option<Density> {
        match s.trim().to_ascii_uppercase().as_str() {
            "A" => Some(Density::A),
            "B" => Some(Density::B),
            "C" => Some(Density::C),
            "D" => Some(Density::D),
            _ => None,
        }
    }

    /// Dense breasts (C or D), as the US MQSA density-notification rule (2024) asks sites to report.
    pub fn is_dense(self) -> bool {
        matches!(self, Density::C | Density::D)
    }
}

impl fmt::Display for Density {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

/// Dataset split, assigned per patient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Val,
    Test,
}

impl Split {
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quartile_rule() {
        assert_eq!(Density::from_percent(0.0), Density::A);
        assert_eq!(Density::from_percent(24.99), Density::A);
        assert_eq!(Density::from_percent(25.0), Density::B);
        assert_eq!(Density::from_percent(50.0), Density::C);
        assert_eq!(Density::from_percent(74.9), Density::C);
        assert_eq!(Density::from_percent(75.0), Density::D);
        assert_eq!(Density::from_percent(100.0), Density::D);
        for d in Density::ALL {
            let (lo, hi) = d.range();
            assert_eq!(Density::from_percent((lo + hi) / 2.0), d);
        }
    }
}
