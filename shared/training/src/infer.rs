//! Using a trained model: rebuild the network from its [`ModelCard`], load its safetensors
//! weights, classify images. Also the weight (de)serialisation that training and checkpoints use.

use std::collections::HashMap;
use std::fs;

use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};

use crate::card::ModelCard;
use crate::model::{NetConfig, ResNet, ARCHITECTURE};
use crate::train::TrainError;

/// A network rebuilt from a card and its weights, ready to classify.
pub struct LoadedModel {
    /// The card it was built from.
    pub card: ModelCard,
    net: ResNet,
    // Owns the tensors `net` uses; dropped with it.
    _vs: nn::VarStore,
    device: Device,
}

impl std::fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModel")
            .field("architecture", &self.card.architecture)
            .field("classes", &self.card.classes)
            .field("device", &self.device)
            .finish()
    }
}

impl LoadedModel {
    /// The device its weights live on.
    pub fn device(&self) -> Device {
        self.device
    }
}

/// Rebuilds the network described by `card` on `device` and loads `safetensors` into it. Refuses
/// an unknown architecture and weights whose names or shapes do not match the network.
pub fn load_model(
    card: &ModelCard,
    safetensors: &[u8],
    device: Device,
) -> Result<LoadedModel, TrainError> {
    if card.architecture != ARCHITECTURE {
        return Err(TrainError::BadWeights(format!(
            "unknown architecture `{}` (this build knows `{ARCHITECTURE}`)",
            card.architecture
        )));
    }
    let config = NetConfig {
        num_classes: card.classes.len() as i64,
        image_size: i64::from(card.image_size),
        base_width: card.base_width,
    };
    config.validate().map_err(TrainError::BadWeights)?;
    let vs = nn::VarStore::new(device);
    let net = ResNet::new(&vs.root(), config);
    load_weights(&vs, safetensors)?;
    Ok(LoadedModel {
        card: card.clone(),
        net,
        _vs: vs,
        device,
    })
}

/// Classifies `images` (`[N, 3, S, S]`, preprocessed as the card says, on any device) and returns
/// the class index of each, in order. Runs in evaluation mode without gradients, 256 at a time.
pub fn predict(model: &LoadedModel, images: &Tensor) -> Result<Vec<usize>, TrainError> {
    let s = i64::from(model.card.image_size);
    let size = images.size();
    if size.len() != 4 || size[1] != 3 || size[2] != s || size[3] != s {
        return Err(TrainError::InvalidConfig(format!(
            "expected images shaped [N, 3, {s}, {s}], got {size:?}"
        )));
    }
    let n = size[0];
    let mut out = Vec::with_capacity(n as usize);
    tch::no_grad(|| -> Result<(), TrainError> {
        let mut start = 0;
        while start < n {
            let len = (n - start).min(256);
            let batch = images
                .f_narrow(0, start, len)?
                .f_to_kind(Kind::Float)?
                .f_to_device(model.device)?;
            let classes = model
                .net
                .forward_t(&batch, false)
                .f_argmax(-1, false)?
                .f_to_device(Device::Cpu)?;
            let classes = Vec::<i64>::try_from(&classes)?;
            out.extend(classes.into_iter().map(|c| c as usize));
            start += len;
        }
        Ok(())
    })?;
    Ok(out)
}

/// All variables of `vs`, as safetensors bytes (names sorted, tensors on the CPU).
pub(crate) fn weights_to_bytes(vs: &nn::VarStore) -> Result<Vec<u8>, TrainError> {
    let mut named: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(name, t)| {
            Ok((
                name,
                t.f_detach()?.f_to_device(Device::Cpu)?.f_contiguous()?,
            ))
        })
        .collect::<Result<_, tch::TchError>>()?;
    named.sort_by(|a, b| a.0.cmp(&b.0));
    // tch writes safetensors only to a path; a private temp file keeps it off shared storage.
    let file = tempfile::Builder::new()
        .prefix("gantry-weights-")
        .suffix(".safetensors")
        .tempfile()?;
    Tensor::write_safetensors(&named, file.path())?;
    Ok(fs::read(file.path())?)
}

/// Copies safetensors `bytes` into the variables of `vs`: every variable must be present with its
/// exact shape, and nothing else may be.
pub(crate) fn load_weights(vs: &nn::VarStore, bytes: &[u8]) -> Result<(), TrainError> {
    let file = tempfile::Builder::new()
        .prefix("gantry-weights-")
        .suffix(".safetensors")
        .tempfile()?;
    fs::write(file.path(), bytes)?;
    let mut tensors: HashMap<String, Tensor> = Tensor::read_safetensors(file.path())
        .map_err(|e| TrainError::BadWeights(format!("not a safetensors file: {e}")))?
        .into_iter()
        .collect();
    let bad = TrainError::BadWeights;
    for (name, mut var) in vs.variables() {
        let src = tensors
            .remove(&name)
            .ok_or_else(|| bad(format!("the weights have no tensor `{name}`")))?;
        if src.size() != var.size() {
            return Err(bad(format!(
                "tensor `{name}` is shaped {:?}, the network needs {:?}",
                src.size(),
                var.size()
            )));
        }
        tch::no_grad(|| var.f_copy_(&src))?;
    }
    if let Some(extra) = tensors.keys().next() {
        return Err(bad(format!(
            "the weights hold tensor `{extra}`, which the network does not have"
        )));
    }
    Ok(())
}
