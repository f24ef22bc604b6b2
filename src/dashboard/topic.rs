//! Topics of the appliance's MQTT contract (docs/daemon.md) read back: `<prefix>/<leaf>` → the
//! appliance (its topic prefix) and the kind of message.

/// The kind of message, by the topic's leaf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// `<prefix>/status`: retained `online` / `offline` (LWT).
    Status,
    /// `<prefix>/status/info`: retained versions.
    StatusInfo,
    /// `<prefix>/health`: retained counters, backlog, intake, free space.
    Health,
    Image,
    Exam,
    Skipped,
    Error,
    /// `<prefix>/drift/<source id>` (retained), with the source id.
    Drift(String),
    Alert,
}

impl Kind {
    /// The leaf's name (`drift` for every source).
    pub fn name(&self) -> &'static str {
        match self {
            Kind::Status => "status",
            Kind::StatusInfo => "status/info",
            Kind::Health => "health",
            Kind::Image => "image",
            Kind::Exam => "exam",
            Kind::Skipped => "skipped",
            Kind::Error => "error",
            Kind::Drift(_) => "drift",
            Kind::Alert => "alert",
        }
    }
}

/// A topic split into the appliance's prefix and the kind of message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// The topic prefix (`mqtt.topic_prefix`, e.g. `mammo/site-1/edge-1`): one appliance.
    pub device: String,
    pub kind: Kind,
}

/// Split a topic; `None` for a topic that is not one of the contract's (ignored).
pub fn parse(topic: &str) -> Option<Parsed> {
    let split = |suffix: &str| {
        topic
            .strip_suffix(suffix)
            .and_then(|p| p.strip_suffix('/'))
            .filter(|p| !p.is_empty())
            .map(str::to_string)
    };
    if let Some(device) = split("status/info") {
        return Some(Parsed {
            device,
            kind: Kind::StatusInfo,
        });
    }
    // <prefix>/drift/<source id>: the source id is one level
    if let Some((rest, source)) = topic.rsplit_once('/') {
        if let Some(device) = rest.strip_suffix("/drift").filter(|d| !d.is_empty()) {
            if !source.is_empty() {
                return Some(Parsed {
                    device: device.to_string(),
                    kind: Kind::Drift(source.to_string()),
                });
            }
        }
    }
    let (device, leaf) = topic.rsplit_once('/')?;
    if device.is_empty() {
        return None;
    }
    let kind = match leaf {
        "status" => Kind::Status,
        "health" => Kind::Health,
        "image" => Kind::Image,
        "exam" => Kind::Exam,
        "skipped" => Kind::Skipped,
        "error" => Kind::Error,
        "alert" => Kind::Alert,
        _ => return None,
    };
    Some(Parsed {
        device: device.to_string(),
        kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_leaf_of_the_contract_is_split_from_its_prefix() {
        let p = parse("mammo/site-1/edge-1/drift/hologic-selenia-dimensions").unwrap();
        assert_eq!(p.device, "mammo/site-1/edge-1");
        assert_eq!(p.kind, Kind::Drift("hologic-selenia-dimensions".into()));
        assert_eq!(parse("a/b/status/info").unwrap().kind, Kind::StatusInfo);
        assert_eq!(parse("a/b/status/info").unwrap().device, "a/b");
        assert_eq!(parse("a/b/exam").unwrap().kind, Kind::Exam);
        assert_eq!(parse("a/alert").unwrap().device, "a");
        assert_eq!(parse("a/b/other"), None);
        assert_eq!(parse("exam"), None);
        assert_eq!(parse("/exam"), None);
        assert_eq!(parse("a/drift/"), None);
    }
}
