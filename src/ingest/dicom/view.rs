//! Laterality and mammographic view from DICOM attributes (ViewCodeSequence, ViewPosition,
//! ImageLaterality / Laterality), with the SNOMED CT and legacy SRT codes of PS3.16 CID 4014 / 4015.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Which breast an image shows (ImageLaterality (0020,0062), else Laterality (0020,0060)).
/// `B` (both) and `U` (unpaired) are not one breast and give `None` where this type is optional.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Laterality {
    /// Left breast.
    L,
    /// Right breast.
    R,
}

impl Laterality {
    /// Parse a DICOM laterality code string (`L`/`R`, trimmed, case-insensitive); anything else is `None`.
    pub fn from_code(s: &str) -> Option<Laterality> {
        match s.trim().to_ascii_uppercase().as_str() {
            "L" => Some(Laterality::L),
            "R" => Some(Laterality::R),
            _ => None,
        }
    }

    /// `"L"` or `"R"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Laterality::L => "L",
            Laterality::R => "R",
        }
    }
}

impl fmt::Display for Laterality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Mammographic view. CC and MLO are the screening views the model scores; the others are
/// recognised so they can be skipped with a precise reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum View {
    /// Cranio-caudal (SCT 399162004, SRT R-10242).
    CC,
    /// Medio-lateral oblique (SCT 399368009, SRT R-10226).
    MLO,
    /// Medio-lateral (SCT 399260004, SRT R-10224). Not an MLO.
    ML,
    /// Latero-medial (SCT 399352003, SRT R-10228).
    LM,
    /// Cranio-caudal exaggerated laterally (SCT 399192008, SRT R-1024A).
    XCCL,
    /// Any other or unknown view (LMO, XCCM, FB, SIO, ISO, specimen, absent …).
    #[serde(rename = "other")]
    Other,
}

impl View {
    /// True for the two screening views the model is trained on.
    pub fn is_screening(self) -> bool {
        matches!(self, View::CC | View::MLO)
    }

    /// Name used in JSON and logs: `CC`, `MLO`, `ML`, `LM`, `XCCL`, `other`.
    pub fn as_str(self) -> &'static str {
        match self {
            View::CC => "CC",
            View::MLO => "MLO",
            View::ML => "ML",
            View::LM => "LM",
            View::XCCL => "XCCL",
            View::Other => "other",
        }
    }

    /// View from one ViewCodeSequence item's CodeValue (SNOMED CT or legacy SRT/SNM3, PS3.16 CID 4014).
    pub fn from_code_value(code: &str) -> Option<View> {
        Some(match code.trim() {
            "399162004" | "R-10242" => View::CC,
            "399368009" | "R-10226" => View::MLO,
            "399260004" | "R-10224" => View::ML,
            "399352003" | "R-10228" => View::LM,
            "399192008" | "R-1024A" | "Y-X1770" => View::XCCL,
            // LMO, XCCM, FB, SIO, ISO, tissue specimen: real views, not screening ones.
            "399099002" | "R-10230" | "399101009" | "R-1024B" | "Y-X1771" | "R-10244"
            | "399188001" | "R-102D0" | "441555000" | "R-40AAA" | "127457009" | "G-8310" => {
                View::Other
            }
            _ => return None,
        })
    }

    /// View from ViewPosition (0018,5101) as modalities write it (`CC`, `MLO`, `ML`, `LM`, `XCCL` …).
    /// Empty gives `None`; an unrecognised non-empty value gives `Other`.
    pub fn from_view_position(s: &str) -> Option<View> {
        let v = s.trim().to_ascii_uppercase();
        Some(match v.as_str() {
            "" => return None,
            "CC" => View::CC,
            "MLO" => View::MLO,
            "ML" => View::ML,
            "LM" => View::LM,
            "XCCL" | "XCC" => View::XCCL,
            _ => View::Other,
        })
    }
}

impl fmt::Display for View {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// View modifiers (ViewModifierCodeSequence, PS3.16 CID 4015) that make an image a diagnostic
/// work-up view rather than a screening one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ViewModifier {
    /// Spot compression (SCT 399055006, SRT R-102D7).
    SpotCompression,
    /// Magnification (SCT 399163009, SRT R-102D6).
    Magnification,
}

impl ViewModifier {
    /// Modifier from a CodeValue; modifiers that do not change screening use (cleavage, rolled …) give `None`.
    pub fn from_code_value(code: &str) -> Option<ViewModifier> {
        match code.trim() {
            "399055006" | "R-102D7" => Some(ViewModifier::SpotCompression),
            "399163009" | "R-102D6" => Some(ViewModifier::Magnification),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_positions() {
        assert_eq!(View::from_code_value("R-10242"), Some(View::CC));
        assert_eq!(View::from_code_value("399368009"), Some(View::MLO));
        assert_eq!(View::from_code_value("R-10224"), Some(View::ML));
        assert_eq!(View::from_code_value("12345"), None);
        assert_eq!(View::from_view_position("ML"), Some(View::ML));
        assert_eq!(View::from_view_position(" mlo "), Some(View::MLO));
        assert_eq!(View::from_view_position(""), None);
        assert_eq!(View::from_view_position("AP"), Some(View::Other));
        assert_eq!(Laterality::from_code("B"), None);
        assert_eq!(Laterality::from_code("r"), Some(Laterality::R));
        assert_eq!(
            ViewModifier::from_code_value("R-102D7"),
            Some(ViewModifier::SpotCompression)
        );
    }
}
