//! One optimizer step ([`train_step`]) and data-parallel training over several devices of one box
//! ([`Replicas`], `fit --devices N`) with Burn's own collective all-reduce (burn-collective):
//! peer 0 is `fit`'s thread, peers 1..N are threads holding a replica of the model and of the
//! optimizer on device i. Each step the batch is cut into N shards, every peer computes the
//! gradients of its shard, `GradientsParams::all_reduce` averages them across peers, and every
//! peer applies the same AdamW update, so the replicas stay equal. BatchNorm statistics are per
//! shard (as in PyTorch's DistributedDataParallel without SyncBatchNorm).

use std::sync::mpsc::{sync_channel, SyncSender};
use std::thread::JoinHandle;

use burn::collective::{self, CollectiveConfig, PeerId, ReduceOperation};
use burn::module::{AutodiffModule, Module};
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use thiserror::Error;

use super::data::{self, Sample};
use super::fit::{FitConfig, TrainModel};
use super::loss::{self, TASKS};

/// Errors of a data-parallel step.
#[derive(Debug, Error)]
pub enum ParallelError {
    #[error("collective operation failed on peer {peer}: {detail}")]
    Collective { peer: u32, detail: String },
    #[error("replica {peer} stopped: {detail}")]
    Replica { peer: u32, detail: String },
}

fn collective_err(peer: PeerId, e: collective::CollectiveError) -> ParallelError {
    ParallelError::Collective {
        peer: peer.0,
        detail: format!("{e:?}"),
    }
}

/// One optimizer step on `samples`: forward through all heads, masked multi-task loss, backward,
/// (with `peer`) the gradients averaged over the collective, AdamW. Returns the updated model and
/// the task losses in [`TASKS`] order followed by the total (one read back from the device).
pub fn train_step<B: AutodiffBackend, O: Optimizer<TrainModel<B>, B>>(
    model: TrainModel<B>,
    optim: &mut O,
    samples: &[Sample],
    cfg: &FitConfig,
    device: &B::Device,
    lr: f64,
    peer: Option<PeerId>,
) -> Result<(TrainModel<B>, Vec<f64>), ParallelError> {
    let items: Vec<(&Sample, Vec<f32>)> = samples.iter().map(|s| (s, s.input.clone())).collect();
    let (x, t) = data::batch::<B>(&items, &cfg.model, device);
    let out = model.net.forward(x);
    let losses = loss::task_losses(&out, &t);
    let lv = cfg.uncertainty.then(|| model.log_vars.val());
    let total = loss::total(&losses, &cfg.weights, lv);
    let mut parts = losses;
    parts.push(total.clone());
    let values = Tensor::cat(parts.into_iter().map(|l| l.detach()).collect(), 0)
        .into_data()
        .convert::<f64>()
        .to_vec::<f64>()
        .unwrap_or_else(|_| vec![f64::NAN; TASKS.len() + 1]);
    let mut grads = GradientsParams::from_grads(total.backward(), &model);
    if let Some(p) = peer {
        grads = grads
            .all_reduce::<B::InnerBackend>(p, ReduceOperation::Mean)
            .map_err(|e| collective_err(p, e))?;
    }
    Ok((optim.step(lr, model, grads), values))
}

/// The devices of a data-parallel run: `n` devices of `first`'s kind from its index on (CUDA 0,
/// 1, …). On the CPU every replica shares the one CPU (useful for tests only).
pub fn devices<B: Backend>(first: &B::Device, n: usize) -> Vec<B::Device> {
    use burn::tensor::backend::DeviceId;
    let id = first.to_id();
    (0..n)
        .map(|i| B::Device::from_id(DeviceId::new(id.type_id, id.index_id + i as u16)))
        .collect()
}

/// Replicas of the model on peers 1..N, fed shards by [`Replicas::scatter`].
pub struct Replicas {
    senders: Vec<SyncSender<(Vec<Sample>, f64)>>,
    handles: Vec<JoinHandle<Result<(), ParallelError>>>,
}

impl Replicas {
    /// Start peers 1..`devices.len()` with copies of `model` and of the optimizer state
    /// `optim_record`, register every peer (this thread as peer 0) with the collective, and
    /// return once all are registered, with `model` for peer 0. Parameters not yet initialised
    /// (Burn initialises lazily, and each clone of a lazy parameter draws its own random values)
    /// are initialised first, so every replica starts from the same weights.
    pub fn start<B: AutodiffBackend>(
        model: TrainModel<B>,
        optim_record: <burn::optim::adaptor::OptimizerAdaptor<
            burn::optim::AdamW,
            TrainModel<B>,
            B,
        > as Optimizer<TrainModel<B>, B>>::Record,
        devices: &[B::Device],
        cfg: &FitConfig,
    ) -> Result<(TrainModel<B>, Replicas), ParallelError>
    where
        TrainModel<B>: AutodiffModule<B>,
    {
        let values = model.clone().into_record();
        let model = model.load_record(values);
        let n = devices.len();
        let config = CollectiveConfig::default().with_num_devices(n);
        let mut senders = vec![];
        let mut handles = vec![];
        for (i, device) in devices.iter().enumerate().skip(1) {
            let (tx, rx) = sync_channel::<(Vec<Sample>, f64)>(1);
            let replica = model.clone().fork(device);
            let device = device.clone();
            let cfg = cfg.clone();
            let record = optim_record.clone();
            let config = config.clone();
            handles.push(std::thread::spawn(move || {
                let peer = PeerId::from(i);
                collective::register::<B::InnerBackend>(peer, device.clone(), config)
                    .map_err(|e| collective_err(peer, e))?;
                let mut optim = AdamWConfig::new()
                    .with_weight_decay(cfg.weight_decay)
                    .init::<B, TrainModel<B>>()
                    .load_record(record);
                let mut model = replica;
                while let Ok((shard, lr)) = rx.recv() {
                    model = train_step(model, &mut optim, &shard, &cfg, &device, lr, Some(peer))?.0;
                }
                collective::finish_collective::<B::InnerBackend>(peer)
                    .map_err(|e| collective_err(peer, e))
            }));
            senders.push(tx);
        }
        let peer = PeerId::from(0usize);
        collective::register::<B::InnerBackend>(peer, devices[0].clone(), config)
            .map_err(|e| collective_err(peer, e))?;
        Ok((model, Replicas { senders, handles }))
    }

    /// Number of peers, this thread included.
    pub fn peers(&self) -> usize {
        self.senders.len() + 1
    }

    /// Send shards 1..N of `batch` to the replicas (with the step's learning rate) and return
    /// shard 0 for this thread. `batch` must hold at least [`Self::peers`] samples.
    pub fn scatter(&self, mut batch: Vec<Sample>, lr: f64) -> Result<Vec<Sample>, ParallelError> {
        let n = self.peers();
        let per = batch.len().div_ceil(n);
        let mut rest = batch.split_off(per.min(batch.len()));
        for (i, tx) in self.senders.iter().enumerate() {
            let take = per.min(rest.len());
            let tail = rest.split_off(take);
            tx.send((rest, lr)).map_err(|_| ParallelError::Replica {
                peer: i as u32 + 1,
                detail: "its thread has ended".into(),
            })?;
            rest = tail;
        }
        Ok(batch)
    }

    /// Stop the replicas and unregister every peer; the first replica error is returned.
    pub fn finish<B: Backend>(self) -> Result<(), ParallelError> {
        drop(self.senders);
        let peer = PeerId::from(0usize);
        let mine = collective::finish_collective::<B>(peer).map_err(|e| collective_err(peer, e));
        for (i, h) in self.handles.into_iter().enumerate() {
            match h.join() {
                Ok(r) => r?,
                Err(_) => {
                    return Err(ParallelError::Replica {
                        peer: i as u32 + 1,
                        detail: "panicked".into(),
                    })
                }
            }
        }
        mine
    }
}
