//! `mammo-edge infer`: the payloads the daemon would publish for the same files, one per file,
//! then one exam per DICOM study ([`Batch`]), scored by src/model/score.rs.

use std::path::{Path, PathBuf};

use crate::edge::exam::{aggregate, ExamError};
use crate::edge::message::{Messages, ModelInfo, Privacy, StoredScore};
use crate::edge::publish::Topics;
use crate::ingest::dicom::{Category, IngestOptions, MammoMeta};
use crate::ingest::image_file::is_image_file;
use crate::model::score::{infer_file_detailed, infer_image_file, InferError, Model};
use crate::model::ModelRunner;

/// What [`Batch::file`] made of one file.
#[derive(Debug, Clone)]
pub struct FilePayload {
    /// The `mammo-edge.image/1`, `.skipped/1` or `.error/1` payload, `file` = the path as given.
    pub payload: serde_json::Value,
    /// True for an image payload.
    pub scored: bool,
}

/// `mammo-edge infer` over several files: each file gives the payload the daemon would publish
/// for it (built by the same [`Messages`] code, so values and rounding are the daemon's; UIDs
/// plain, the file named by its path, timings and `produced_at` of this run), and [`Batch::exams`]
/// gives the exam payload of each study, the exam rule applied as the daemon applies it: to the
/// image payloads' values (read back like the daemon reads its stored results), revision 1, a
/// SOPInstanceUID counted once.
pub struct Batch<'a> {
    runner: &'a ModelRunner,
    msgs: Messages,
    opts: IngestOptions,
    /// Studies in first-seen order with their scores and image result ids.
    studies: Vec<(String, Vec<StoredScore>)>,
}

impl<'a> Batch<'a> {
    /// A batch scored by `model` with the ingest rules `opts`.
    pub fn new(model: &'a Model, opts: IngestOptions) -> Batch<'a> {
        Batch {
            runner: &model.runner,
            msgs: Messages {
                topics: Topics::new("mammo-edge/infer"),
                model: ModelInfo::new(&model.runner.meta, &model.sha256),
                privacy: Privacy::local(),
            },
            opts: crate::model::score::for_model(&model.runner, &opts).into_owned(),
            studies: Vec::new(),
        }
    }

    /// Score one file, DICOM or image file by its extension (a rejection is a payload too,
    /// never an `Err`). Image files belong to no study: they give no exam.
    pub fn file(&mut self, path: &Path) -> FilePayload {
        let label = serde_json::Value::String(path.display().to_string());
        if is_image_file(path) {
            return match infer_image_file(self.runner, path) {
                Ok(s) => {
                    let mut payload = self
                        .msgs
                        .image_file(path, &s.sha256, &s.report, &s.result)
                        .payload;
                    payload["file"] = label;
                    FilePayload {
                        payload,
                        scored: true,
                    }
                }
                Err(e) => self.rejected(path, label, None, e),
            };
        }
        match infer_file_detailed(self.runner, path, &self.opts) {
            Ok(s) => {
                let mut payload = self.msgs.image(path, &s.meta, &s.result).payload;
                payload["file"] = label;
                match serde_json::from_value::<StoredScore>(payload.clone()) {
                    Ok(score) => {
                        let study = s.meta.study_instance_uid.clone();
                        let i = match self.studies.iter().position(|(u, _)| *u == study) {
                            Some(i) => i,
                            None => {
                                self.studies.push((study, Vec::new()));
                                self.studies.len() - 1
                            }
                        };
                        let scores = &mut self.studies[i].1;
                        if !scores.iter().any(|o| o.result_id == score.result_id) {
                            scores.push(score);
                        }
                    }
                    Err(e) => log::warn!("{}: not counted in its exam: {e}", path.display()),
                }
                FilePayload {
                    payload,
                    scored: true,
                }
            }
            Err((meta, e)) => self.rejected(path, label, meta, e),
        }
    }

    /// The `skipped` / `error` payload of a file that was not scored.
    fn rejected(
        &self,
        path: &Path,
        label: serde_json::Value,
        meta: Option<Box<MammoMeta>>,
        e: InferError,
    ) -> FilePayload {
        let (size, mtime) = std::fs::metadata(path)
            .map(|m| {
                let t = m
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_nanos());
                (m.len(), t)
            })
            .unwrap_or((0, 0));
        let key = format!("{}|{size}|{mtime}", path.display());
        let skipped = e.category() == Category::Skipped;
        let mut payload = self
            .msgs
            .rejected(
                skipped,
                path,
                &key,
                meta.as_deref(),
                e.code(),
                &e.to_string(),
            )
            .payload;
        payload["file"] = label;
        FilePayload {
            payload,
            scored: false,
        }
    }

    /// The `mammo-edge.exam/1` payload of each study with scored images, in the order the
    /// studies were first seen; a study whose images the exam rule refuses gives its error.
    pub fn exams(&self) -> Vec<Result<serde_json::Value, ExamError>> {
        self.studies
            .iter()
            .map(|(study, scores)| {
                let s: Vec<_> = scores.iter().map(StoredScore::score).collect();
                let exam = aggregate(&s, self.msgs.model.cancer_threshold, 1)?;
                let ids: Vec<String> = scores.iter().map(|s| s.result_id.clone()).collect();
                Ok(self
                    .msgs
                    .exam(&self.msgs.privacy.uid(study), &exam, &ids)
                    .payload)
            })
            .collect()
    }
}

/// `infer --sr DIR`: one Mammography CAD SR per exam of `exams` ([`crate::edge::sr`]), from the
/// DICOM files in `scored` (path + image payload) of that study, written to
/// `DIR/<SOPInstanceUID of the SR>.dcm` (created if missing). Returns the files written.
/// Errors: the folder, a source header, the SR build or the write (anyhow: a CLI helper).
pub fn write_srs(
    dir: &Path,
    scored: &[(PathBuf, serde_json::Value)],
    exams: &[serde_json::Value],
    model_sha256: &str,
    now: std::time::SystemTime,
) -> anyhow::Result<Vec<PathBuf>> {
    use crate::edge::sr;
    std::fs::create_dir_all(dir)?;
    let mut out = Vec::new();
    for exam in exams {
        let Some(study) = exam["study_instance_uid"].as_str() else {
            continue;
        };
        let mut images = Vec::new();
        for (path, payload) in scored {
            if payload["study_instance_uid"].as_str() == Some(study) {
                images.push((sr::SourceImage::read(path)?, payload.clone()));
            }
        }
        if images.is_empty() {
            continue;
        }
        let revision = exam["revision"].as_u64().unwrap_or(1);
        let sources: Vec<&str> = images
            .iter()
            .map(|(s, _)| s.sop_instance_uid.as_str())
            .collect();
        let id = sr::identity(
            study,
            model_sha256,
            revision,
            &sources,
            sr::ContentTime::at(now),
        );
        let obj = sr::build(&images, exam, &id)?;
        let path = dir.join(format!("{}.dcm", id.sop_instance_uid));
        obj.write_to_file(&path)?;
        out.push(path);
    }
    Ok(out)
}
