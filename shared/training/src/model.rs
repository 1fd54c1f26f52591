//! The classifier: a small ResNet (He et al., 2015) built with `tch::nn`.
//!
//! Layout, for base width `w`:
//!
//! ```text
//! stem    conv3x3(3 -> w, stride s) + BN + ReLU   [+ maxpool3x3/2 when image_size > 128]
//! layer1  BasicBlock(w  -> w,  stride 1)
//! layer2  BasicBlock(w  -> 2w, stride 2)
//! layer3  BasicBlock(2w -> 4w, stride 2)
//! head    global average pool, linear(4w -> classes)
//! ```
//!
//! `s` is 1 up to 64 px and 2 above, so the last feature map stays a few pixels wide whatever
//! the input size. A BasicBlock is conv3x3-BN-ReLU-conv3x3-BN plus a shortcut (1x1 conv + BN when
//! the shape changes), then ReLU. Convolutions have no bias (BN follows). Eight weighted layers:
//! [`ARCHITECTURE`] names this layout, and a card that names another is refused when loading.
//! `bench/train_throughput.py` builds the same network in PyTorch; keep the two in step.

use tch::nn::{self, ModuleT};
use tch::Tensor;

/// Name of this network layout, recorded in model cards.
pub const ARCHITECTURE: &str = "gantry-resnet8-v1";

/// Shape of the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// Output classes (at least 2).
    pub num_classes: i64,
    /// Input side in pixels.
    pub image_size: i64,
    /// Channels of the first stage; the others have 2x and 4x.
    pub base_width: i64,
}

impl NetConfig {
    /// Stride of the stem convolution for this input size.
    pub fn stem_stride(&self) -> i64 {
        if self.image_size > 64 {
            2
        } else {
            1
        }
    }

    /// Whether the stem ends with a max-pool (large inputs only).
    pub fn stem_pool(&self) -> bool {
        self.image_size > 128
    }

    /// Checks the values are ones the network can be built with.
    pub fn validate(&self) -> Result<(), String> {
        if self.num_classes < 2 {
            return Err(format!(
                "a classifier needs at least 2 classes, not {}",
                self.num_classes
            ));
        }
        if !(16..=512).contains(&self.image_size) {
            return Err(format!(
                "image_size must be within 16..=512, not {}",
                self.image_size
            ));
        }
        if !(4..=256).contains(&self.base_width) {
            return Err(format!(
                "base_width must be within 4..=256, not {}",
                self.base_width
            ));
        }
        Ok(())
    }
}

fn conv3x3(p: nn::Path, c_in: i64, c_out: i64, stride: i64) -> nn::Conv2D {
    let cfg = nn::ConvConfig {
        stride,
        padding: 1,
        bias: false,
        ..Default::default()
    };
    nn::conv2d(p, c_in, c_out, 3, cfg)
}

fn bn(p: nn::Path, c: i64) -> nn::BatchNorm {
    // PyTorch starts BN scales at 1; tch's default is uniform(0, 1), which trains worse.
    let cfg = nn::BatchNormConfig {
        ws_init: nn::Init::Const(1.0),
        ..Default::default()
    };
    nn::batch_norm2d(p, c, cfg)
}

#[derive(Debug)]
struct BasicBlock {
    conv1: nn::Conv2D,
    bn1: nn::BatchNorm,
    conv2: nn::Conv2D,
    bn2: nn::BatchNorm,
    shortcut: Option<(nn::Conv2D, nn::BatchNorm)>,
}

impl BasicBlock {
    fn new(p: nn::Path, c_in: i64, c_out: i64, stride: i64) -> Self {
        let shortcut = (stride != 1 || c_in != c_out).then(|| {
            let cfg = nn::ConvConfig {
                stride,
                bias: false,
                ..Default::default()
            };
            (
                nn::conv2d(&p / "shortcut_conv", c_in, c_out, 1, cfg),
                bn(&p / "shortcut_bn", c_out),
            )
        });
        Self {
            conv1: conv3x3(&p / "conv1", c_in, c_out, stride),
            bn1: bn(&p / "bn1", c_out),
            conv2: conv3x3(&p / "conv2", c_out, c_out, 1),
            bn2: bn(&p / "bn2", c_out),
            shortcut,
        }
    }
}

impl ModuleT for BasicBlock {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let ys = xs.apply(&self.conv1).apply_t(&self.bn1, train).relu();
        let ys = ys.apply(&self.conv2).apply_t(&self.bn2, train);
        let skip = match &self.shortcut {
            Some((conv, norm)) => xs.apply(conv).apply_t(norm, train),
            None => xs.shallow_clone(),
        };
        (ys + skip).relu()
    }
}

/// The classifier. Build it in a `VarStore`, call `forward_t(images, train)` for logits.
#[derive(Debug)]
pub struct ResNet {
    config: NetConfig,
    stem_conv: nn::Conv2D,
    stem_bn: nn::BatchNorm,
    blocks: Vec<BasicBlock>,
    fc: nn::Linear,
}

impl ResNet {
    /// Creates the network's variables under `p`. Panics on a config that fails
    /// [`NetConfig::validate`], so validate first.
    pub fn new(p: &nn::Path, config: NetConfig) -> ResNet {
        let w = config.base_width;
        let blocks = vec![
            BasicBlock::new(p / "layer1", w, w, 1),
            BasicBlock::new(p / "layer2", w, 2 * w, 2),
            BasicBlock::new(p / "layer3", 2 * w, 4 * w, 2),
        ];
        ResNet {
            config,
            stem_conv: conv3x3(p / "stem_conv", 3, w, config.stem_stride()),
            stem_bn: bn(p / "stem_bn", w),
            blocks,
            fc: nn::linear(p / "fc", 4 * w, config.num_classes, Default::default()),
        }
    }

    /// The shape it was built with.
    pub fn config(&self) -> NetConfig {
        self.config
    }
}

impl ModuleT for ResNet {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut ys = xs
            .apply(&self.stem_conv)
            .apply_t(&self.stem_bn, train)
            .relu();
        if self.config.stem_pool() {
            ys = ys.max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
        }
        for block in &self.blocks {
            ys = block.forward_t(&ys, train);
        }
        ys.adaptive_avg_pool2d([1, 1])
            .flatten(1, -1)
            .apply(&self.fc)
    }
}
