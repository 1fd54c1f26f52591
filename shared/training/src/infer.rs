//! Using a trained model: rebuild the network from its [`ModelCard`], load its safetensors
//! weights, classify images.

use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};

use crate::card::ModelCard;
use crate::error::TrainError;
use crate::model::{NetConfig, ResNet, ARCHITECTURE};
use crate::weights::load_weights;

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

/// Images per forward pass when classifying.
pub const INFER_BATCH: i64 = 64;

/// The `k` most probable classes of each of `images` (`[N, 3, S, S]`, preprocessed as the card
/// says): per image, `(class index, softmax probability)` pairs, most probable first (at most
/// the number of classes). Evaluation mode, no gradients, [`INFER_BATCH`] images per pass on the
/// model's device.
pub fn top_k(
    model: &LoadedModel,
    images: &Tensor,
    k: usize,
) -> Result<Vec<Vec<(usize, f64)>>, TrainError> {
    let s = i64::from(model.card.image_size);
    let size = images.size();
    if size.len() != 4 || size[1] != 3 || size[2] != s || size[3] != s {
        return Err(TrainError::InvalidConfig(format!(
            "expected images shaped [N, 3, {s}, {s}], got {size:?}"
        )));
    }
    let k = k.clamp(1, model.card.classes.len().max(1)) as i64;
    let n = size[0];
    let mut out = Vec::with_capacity(n as usize);
    tch::no_grad(|| -> Result<(), TrainError> {
        let mut start = 0;
        while start < n {
            let len = (n - start).min(INFER_BATCH);
            let batch = images
                .f_narrow(0, start, len)?
                .f_to_kind(Kind::Float)?
                .f_to_device(model.device)?;
            let probs = model
                .net
                .forward_t(&batch, false)
                .f_softmax(-1, Kind::Float)?;
            let (values, indices) = probs.f_topk(k, -1, true, true)?;
            let values = Vec::<f32>::try_from(&values.f_to_device(Device::Cpu)?.f_flatten(0, -1)?)?;
            let indices =
                Vec::<i64>::try_from(&indices.f_to_device(Device::Cpu)?.f_flatten(0, -1)?)?;
            for (v, i) in values.chunks(k as usize).zip(indices.chunks(k as usize)) {
                out.push(
                    i.iter()
                        .zip(v)
                        .map(|(i, v)| (*i as usize, f64::from(*v)))
                        .collect(),
                );
            }
            start += len;
        }
        Ok(())
    })?;
    Ok(out)
}

/// Preprocesses encoded images exactly as the card says (the checks, decoding, resize and
/// normalisation of [`crate::Dataset::load`]) into one `[N, 3, S, S]` CPU tensor. The error
/// names the index of the first image that is not one.
pub fn preprocess_for(
    card: &ModelCard,
    images: &[&[u8]],
    limits: &crate::DatasetLimits,
) -> Result<Tensor, (usize, crate::DatasetError)> {
    let s = card.image_size;
    let per = 3 * (s as usize) * (s as usize);
    let mut pixels = Vec::with_capacity(per * images.len());
    for (i, bytes) in images.iter().enumerate() {
        let one =
            crate::preprocess_image(bytes, s, &card.normalization, limits).map_err(|e| (i, e))?;
        pixels.extend_from_slice(&one);
    }
    let s = i64::from(s);
    Ok(Tensor::from_slice(&pixels).view([images.len() as i64, 3, s, s]))
}
