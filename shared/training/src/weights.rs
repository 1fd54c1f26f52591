//! A network's weights as safetensors bytes, both ways: what training stores in checkpoints and
//! model versions, and what loading a model (to resume or to classify) reads back. Names are
//! sorted and tensors moved to the CPU, so the same weights always give the same bytes.

use std::collections::HashMap;
use std::fs;

use tch::nn;
use tch::{Device, Tensor};

use crate::error::TrainError;

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
