//! Manufacturer → vendor vocabulary of DESIGN.md, by whole-word rules on the DICOM Manufacturer string.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Mammography vendors the appliance knows, in the project's fixed vocabulary
/// (`hologic, ge, siemens, fujifilm, ims_giotto, planmed, philips, agfa, carestream, konica, other`).
/// The same names are used in the manifest, the model's vendor head, `inspect` and MQTT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Vendor {
    Hologic,
    Ge,
    Siemens,
    Fujifilm,
    ImsGiotto,
    Planmed,
    Philips,
    Agfa,
    Carestream,
    Konica,
    Other,
}

/// Whole words (upper case) that identify each vendor in Manufacturer (0008,0070).
/// Words, not substrings: "AGFA-GEVAERT" must not match `GE`, and a model name with "MG" says nothing.
const RULES: &[(Vendor, &[&str])] = &[
    (Vendor::Agfa, &["AGFA"]),
    (Vendor::Hologic, &["HOLOGIC", "LORAD"]),
    (Vendor::Ge, &["GE", "GEMS", "GEHC"]),
    (Vendor::Siemens, &["SIEMENS"]),
    (Vendor::Fujifilm, &["FUJIFILM", "FUJI"]),
    (Vendor::ImsGiotto, &["GIOTTO", "IMS"]),
    (Vendor::Planmed, &["PLANMED"]),
    (Vendor::Philips, &["PHILIPS"]),
    (Vendor::Carestream, &["CARESTREAM", "KODAK"]),
    (Vendor::Konica, &["KONICA"]),
];

impl Vendor {
    /// All vendors in vocabulary order (the order of the model's vendor classes by default).
    pub const ALL: [Vendor; 11] = [
        Vendor::Hologic,
        Vendor::Ge,
        Vendor::Siemens,
        Vendor::Fujifilm,
        Vendor::ImsGiotto,
        Vendor::Planmed,
        Vendor::Philips,
        Vendor::Agfa,
        Vendor::Carestream,
        Vendor::Konica,
        Vendor::Other,
    ];

    /// Normalise a DICOM Manufacturer (0008,0070) value; `other` when no rule matches or it is empty.
    pub fn from_manufacturer(manufacturer: &str) -> Vendor {
        let words: Vec<String> = manufacturer
            .split(|c: char| !c.is_ascii_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(|w| w.to_ascii_uppercase())
            .collect();
        RULES
            .iter()
            .find(|(_, keys)| words.iter().any(|w| keys.contains(&w.as_str())))
            .map(|(v, _)| *v)
            .unwrap_or(Vendor::Other)
    }

    /// The vocabulary name, e.g. `ims_giotto`.
    pub fn as_str(self) -> &'static str {
        match self {
            Vendor::Hologic => "hologic",
            Vendor::Ge => "ge",
            Vendor::Siemens => "siemens",
            Vendor::Fujifilm => "fujifilm",
            Vendor::ImsGiotto => "ims_giotto",
            Vendor::Planmed => "planmed",
            Vendor::Philips => "philips",
            Vendor::Agfa => "agfa",
            Vendor::Carestream => "carestream",
            Vendor::Konica => "konica",
            Vendor::Other => "other",
        }
    }
}

impl fmt::Display for Vendor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::Vendor::{self, *};

    #[test]
    fn manufacturer_strings_as_vendors_write_them() {
        let cases = [
            ("HOLOGIC, Inc.", Hologic),
            ("Hologic", Hologic),
            ("LORAD", Hologic),
            ("GE MEDICAL SYSTEMS", Ge),
            ("GE Healthcare", Ge),
            ("AGFA-GEVAERT", Agfa),
            ("Agfa", Agfa),
            ("SIEMENS", Siemens),
            ("Siemens Healthineers", Siemens),
            ("FUJIFILM Corporation", Fujifilm),
            ("FUJI PHOTO FILM Co., ltd.", Fujifilm),
            ("I.M.S. GIOTTO S.p.A.", ImsGiotto),
            ("IMS GIOTTO", ImsGiotto),
            ("Planmed", Planmed),
            ("Philips Medical Systems", Philips),
            ("Carestream Health", Carestream),
            ("KONICA MINOLTA", Konica),
            ("GENERAL HOSPITAL", Other),
            ("MGE systems", Other),
            ("", Other),
        ];
        for (s, want) in cases {
            assert_eq!(Vendor::from_manufacturer(s), want, "{s:?}");
        }
    }

    #[test]
    fn vocabulary_names_round_trip_through_serde() {
        for v in Vendor::ALL {
            let json = serde_json::to_string(&v).unwrap();
            assert_eq!(json, format!("\"{}\"", v.as_str()));
            let back: Vendor = serde_json::from_str(&json).unwrap();
            assert_eq!(back, v);
        }
    }
}
