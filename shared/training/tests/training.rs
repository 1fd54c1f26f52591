//! Training on synthetic shape datasets: it learns shapes, it does not learn shuffled labels, the
//! weights load back and classify as reported, progress, cancel and resume behave.

use std::ops::ControlFlow;
use std::path::Path;

use gantry_training::dataset::preprocess_image;
use gantry_training::synthetic::{self, SyntheticSpec};
use gantry_training::tch::{Device, Tensor};
use gantry_training::{
    load_model, predict, train, Checkpoint, Dataset, DatasetLimits, LoadOptions, Progress,
    ProgressKind, TrainConfig, TrainError, TrainedModel,
};

/// The recipe the service's defaults should match: 200 images per class at 32x32, 20 epochs,
/// Adam at 3e-3 with a cosine schedule, batches of 32.
fn shapes(dir: &Path, per_class: usize, shuffle_labels: bool) -> Dataset {
    let spec = SyntheticSpec {
        per_class,
        image_size: 32,
        seed: 7,
        shuffle_labels,
        mixed_formats: true,
    };
    synthetic::generate(dir, &spec).expect("generate");
    let options = LoadOptions {
        image_size: 32,
        validation_split: 0.2,
        ..LoadOptions::default()
    };
    Dataset::load(dir, &options).expect("load")
}

fn config(epochs: u32) -> TrainConfig {
    TrainConfig {
        epochs,
        seed: 3,
        ..TrainConfig::default()
    }
}

fn keep_going(_: Progress) -> ControlFlow<()> {
    ControlFlow::Continue(())
}

fn no_checkpoints(_: u32, _: Vec<u8>) -> ControlFlow<()> {
    ControlFlow::Continue(())
}

fn train_quietly(config: &TrainConfig, data: &Dataset) -> TrainedModel {
    train(
        config,
        data,
        Device::Cpu,
        &mut keep_going,
        &mut no_checkpoints,
        None,
    )
    .expect("train")
}

fn accuracy(predicted: &[usize], labels: &[i64]) -> f64 {
    let correct = predicted
        .iter()
        .zip(labels)
        .filter(|(p, l)| **p as i64 == **l)
        .count();
    correct as f64 / labels.len() as f64
}

#[test]
fn shapes_are_learnt_and_the_weights_classify_as_reported() {
    let dir = tempfile::tempdir().unwrap();
    let data = shapes(dir.path(), 200, false);
    assert_eq!(data.classes, ["circle", "square", "triangle"]);
    assert_eq!((data.train.len(), data.validation.len()), (480, 120));

    let model = train_quietly(&config(20), &data);
    let card = &model.card;
    let reported = card.final_val_accuracy().unwrap();
    eprintln!(
        "validation accuracy per epoch: {:?}",
        card.metrics
            .iter()
            .map(|m| m.val_accuracy.unwrap())
            .collect::<Vec<_>>()
    );
    assert!(reported >= 0.9, "validation accuracy {reported}");
    assert_eq!(card.metrics.len(), 20);
    assert_eq!(card.dataset_hash, data.content_hash.as_str());
    assert_eq!(card.training.val_samples, 120);

    // The card survives JSON, and the safetensors load into a freshly built network.
    let card: gantry_training::ModelCard =
        serde_json::from_str(&serde_json::to_string(card).unwrap()).unwrap();
    let loaded = load_model(&card, &model.weights, Device::Cpu).unwrap();
    let predicted = predict(&loaded, &data.validation.images_tensor()).unwrap();
    assert_eq!(accuracy(&predicted, &data.validation.labels), reported);

    // Images preprocessed one by one from their files classify the same way.
    let some: Vec<Tensor> = data.validation.paths[..10]
        .iter()
        .map(|p| {
            let bytes = std::fs::read(dir.path().join(p)).unwrap();
            let px = preprocess_image(
                &bytes,
                card.image_size,
                &card.normalization,
                &DatasetLimits::default(),
            )
            .unwrap();
            Tensor::from_slice(&px).view([3, 32, 32])
        })
        .collect();
    assert_eq!(
        predict(&loaded, &Tensor::stack(&some, 0)).unwrap(),
        predicted[..10]
    );

    // Weights for another network are refused.
    let mut other = card.clone();
    other.classes.push("hexagon".into());
    assert!(matches!(
        load_model(&other, &model.weights, Device::Cpu),
        Err(TrainError::BadWeights(_))
    ));
}

#[test]
fn shuffled_labels_are_not_learnt() {
    let dir = tempfile::tempdir().unwrap();
    let data = shapes(dir.path(), 200, true);
    let model = train_quietly(&config(20), &data);
    let acc = model.card.final_val_accuracy().unwrap();
    assert!(acc < 0.5, "validation accuracy {acc} on shuffled labels");
}

#[test]
fn progress_reports_every_epoch_and_the_whole_job() {
    let dir = tempfile::tempdir().unwrap();
    let data = shapes(dir.path(), 20, false);
    let config = TrainConfig {
        epochs: 2,
        batch_size: 16,
        report_interval_ms: 0,
        ..config(2)
    };
    let mut events = Vec::new();
    let mut checkpoints = Vec::new();
    let model = train(
        &config,
        &data,
        Device::Cpu,
        &mut |p| {
            events.push(p);
            ControlFlow::Continue(())
        },
        &mut |epoch, bytes| {
            checkpoints.push((epoch, bytes.len()));
            ControlFlow::Continue(())
        },
        None,
    )
    .unwrap();
    // 48 training images in batches of 16: 3 steps per epoch, each a Report (interval 0), then
    // an EpochEnd per epoch.
    let kinds: Vec<_> = events.iter().map(|e| (e.kind, e.epoch, e.step)).collect();
    use ProgressKind::*;
    assert_eq!(
        kinds,
        [
            (Report, 1, 1),
            (Report, 1, 2),
            (Report, 1, 3),
            (EpochEnd, 1, 3),
            (Report, 2, 4),
            (Report, 2, 5),
            (Report, 2, 6),
            (EpochEnd, 2, 6)
        ]
    );
    assert!(events
        .iter()
        .all(|e| e.total_steps == 6 && e.steps_per_epoch == 3 && e.epochs == 2));
    assert!(events
        .iter()
        .all(|e| e.loss.is_finite() && e.loss > 0.0 && e.samples_per_sec > 0.0));
    assert!(events
        .iter()
        .all(|e| (e.kind == EpochEnd) == e.val_accuracy.is_some()));
    assert_eq!(events.last().unwrap().eta_seconds, 0.0);
    // The stored weights are the best epoch's, and the card quotes that epoch's accuracy.
    let best = model.card.training.best_epoch.expect("a best epoch");
    let best_val = events
        .iter()
        .filter(|e| e.kind == EpochEnd)
        .filter_map(|e| e.val_accuracy)
        .fold(0.0, f64::max);
    assert_eq!(model.card.final_val_accuracy(), Some(best_val));
    assert_eq!(
        model.card.metrics[best as usize - 1].val_accuracy,
        Some(best_val)
    );
    assert_eq!(checkpoints.iter().map(|c| c.0).collect::<Vec<_>>(), [1, 2]);
}

#[test]
fn break_from_the_callback_cancels_within_one_step() {
    let dir = tempfile::tempdir().unwrap();
    let data = shapes(dir.path(), 20, false);
    let config = TrainConfig {
        epochs: 5,
        batch_size: 8,
        ..config(5)
    };
    let mut calls = 0;
    let mut checkpoints = 0;
    let result = train(
        &config,
        &data,
        Device::Cpu,
        &mut |_| {
            calls += 1;
            if calls == 3 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        },
        &mut |_, _| {
            checkpoints += 1;
            ControlFlow::Continue(())
        },
        None,
    );
    assert!(
        matches!(
            result,
            Err(TrainError::Cancelled {
                completed_epochs: 0
            })
        ),
        "{result:?}"
    );
    assert_eq!(calls, 3, "no callback after Break");
    assert_eq!(checkpoints, 0);
}

#[test]
fn resuming_from_a_checkpoint_continues_at_the_next_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let data = shapes(dir.path(), 20, false);
    let config = TrainConfig {
        epochs: 3,
        batch_size: 16,
        ..config(3)
    };

    // First run: stopped (as if the node died) right after epoch 1 was checkpointed.
    let mut saved = None;
    let first = train(
        &config,
        &data,
        Device::Cpu,
        &mut |p| {
            if p.kind == ProgressKind::EpochEnd {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        },
        &mut |epoch, bytes| {
            saved = Some((epoch, bytes));
            ControlFlow::Continue(())
        },
        None,
    );
    assert!(
        matches!(
            first,
            Err(TrainError::Cancelled {
                completed_epochs: 1
            })
        ),
        "{first:?}"
    );
    let (epoch, bytes) = saved.unwrap();
    assert_eq!(epoch, 1);
    let checkpoint = Checkpoint::from_bytes(&bytes).unwrap();
    assert_eq!((checkpoint.epoch, checkpoint.metrics.len()), (1, 1));

    // Second run, from the checkpoint: epochs 2 and 3 only, history carried over.
    let mut events = Vec::new();
    let model = train(
        &config,
        &data,
        Device::Cpu,
        &mut |p| {
            events.push((p.epoch, p.step));
            ControlFlow::Continue(())
        },
        &mut no_checkpoints,
        Some(checkpoint.clone()),
    )
    .unwrap();
    assert_eq!(
        events.first(),
        Some(&(2, 4)),
        "3 steps per epoch, so epoch 2 starts at step 4"
    );
    assert!(events.iter().all(|(epoch, _)| *epoch >= 2));
    let metrics = &model.card.metrics;
    assert_eq!(
        metrics.iter().map(|m| m.epoch).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(metrics[0], checkpoint.metrics[0]);
    assert_eq!(model.card.training.resumed_from_epoch, Some(1));

    // A checkpoint of another dataset is refused; garbage is not a checkpoint.
    let mut other = checkpoint;
    other.classes[0] = "hexagon".into();
    let refused = train(
        &config,
        &data,
        Device::Cpu,
        &mut keep_going,
        &mut no_checkpoints,
        Some(other),
    );
    assert!(
        matches!(refused, Err(TrainError::IncompatibleCheckpoint(_))),
        "{refused:?}"
    );
    assert!(matches!(
        Checkpoint::from_bytes(b"not a checkpoint"),
        Err(TrainError::BadCheckpoint(_))
    ));
}

#[test]
fn bad_configurations_are_refused_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let data = shapes(dir.path(), 5, false);
    for config in [
        TrainConfig {
            epochs: 0,
            ..TrainConfig::default()
        },
        TrainConfig {
            batch_size: 0,
            ..TrainConfig::default()
        },
        TrainConfig {
            learning_rate: f64::NAN,
            ..TrainConfig::default()
        },
        TrainConfig {
            threads: Some(0),
            ..TrainConfig::default()
        },
    ] {
        let result = train(
            &config,
            &data,
            Device::Cpu,
            &mut keep_going,
            &mut no_checkpoints,
            None,
        );
        assert!(
            matches!(result, Err(TrainError::InvalidConfig(_))),
            "{config:?}: {result:?}"
        );
    }
}

#[test]
fn a_run_whose_last_epoch_is_worse_yields_the_best_epoch_even_after_a_resume() {
    use gantry_training::TrainingSession;
    let dir = tempfile::tempdir().unwrap();
    let data = shapes(dir.path(), 10, false);
    let config = TrainConfig {
        batch_size: 16,
        ..config(3)
    };
    // The session is driven by hand so the validation figures are the test's to choose.
    let mut session = TrainingSession::start(&config, &data, Device::Cpu, None).unwrap();
    let trained = session.train_epoch(1, &mut keep_going).unwrap();
    session.record(&trained, Some(0.9)).unwrap();
    let first = session.checkpoint(1).unwrap();
    let trained = session.train_epoch(2, &mut keep_going).unwrap();
    session.record(&trained, Some(0.4)).unwrap();
    let second = session.checkpoint(2).unwrap();
    assert_ne!(first.weights, second.weights);
    let best = second.best.clone().expect("a best epoch");
    assert_eq!((best.epoch, best.val_accuracy), (1, 0.9));
    assert_eq!(best.weights, first.weights);

    // The node dies; another resumes from the stored checkpoint, and epoch 3 is worse too.
    let stored = Checkpoint::from_bytes(&second.to_bytes()).unwrap();
    assert_eq!((stored.epoch, &stored.weights), (2, &second.weights));
    assert_eq!(stored.best, second.best);
    drop(session);
    let mut session =
        TrainingSession::start(&config, &data, Device::Cpu, Some(stored.clone())).unwrap();
    let trained = session.train_epoch(3, &mut keep_going).unwrap();
    session.record(&trained, Some(0.5)).unwrap();
    let model = session.finish().unwrap();
    assert_eq!(
        model.weights, first.weights,
        "the uploaded weights are epoch 1's"
    );
    assert_eq!(model.card.training.best_epoch, Some(1));
    assert_eq!(model.card.final_val_accuracy(), Some(0.9));
    assert_eq!(model.card.metrics.len(), 3);

    // Had epoch 3 been the best, it would be the one.
    let mut session = TrainingSession::start(&config, &data, Device::Cpu, Some(stored)).unwrap();
    let trained = session.train_epoch(3, &mut keep_going).unwrap();
    session.record(&trained, Some(0.95)).unwrap();
    let last = session.checkpoint(3).unwrap();
    let model = session.finish().unwrap();
    assert_eq!(model.weights, last.weights);
    assert_eq!(model.card.training.best_epoch, Some(3));
}

#[test]
fn augmentation_is_determined_by_the_seed() {
    use gantry_training::session::{apply_moves, draw_moves, Move};
    use rand::SeedableRng;
    let config = TrainConfig {
        augment: true,
        hflip: true,
        ..TrainConfig::default()
    };
    let draw = |seed: u64| {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        draw_moves(&mut rng, 32, 32, &config)
    };
    assert_eq!(draw(1), draw(1));
    assert_ne!(draw(1), draw(2));
    assert!(draw(1).iter().all(|m| m.dx.abs() <= 4 && m.dy.abs() <= 4));
    let plain = TrainConfig {
        augment: false,
        hflip: false,
        ..TrainConfig::default()
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    assert!(draw_moves(&mut rng, 8, 32, &plain).iter().all(|m| *m
        == Move {
            dx: 0,
            dy: 0,
            flip: false
        }));

    // Four 1x5x5 "images" holding 0..25: still, shifted right by one, down by one, flipped.
    let xs = Tensor::arange(25, (gantry_training::tch::Kind::Float, Device::Cpu))
        .view([1, 1, 5, 5])
        .repeat([4, 3, 1, 1]);
    let moves = [
        Move {
            dx: 0,
            dy: 0,
            flip: false,
        },
        Move {
            dx: 1,
            dy: 0,
            flip: false,
        },
        Move {
            dx: 0,
            dy: 1,
            flip: false,
        },
        Move {
            dx: 0,
            dy: 0,
            flip: true,
        },
    ];
    let out = apply_moves(&xs, &moves).unwrap();
    assert_eq!(out.size(), [4, 3, 5, 5]);
    let row = |i: i64, c: i64, y: i64| Vec::<f32>::try_from(out.get(i).get(c).get(y)).unwrap();
    assert_eq!(row(0, 0, 1), [5., 6., 7., 8., 9.]);
    assert_eq!(
        row(1, 2, 1),
        [5., 5., 6., 7., 8.],
        "border pixels fill the gap"
    );
    assert_eq!(row(2, 1, 0), [0., 1., 2., 3., 4.]);
    assert_eq!(row(2, 1, 2), [5., 6., 7., 8., 9.]);
    assert_eq!(row(3, 0, 0), [4., 3., 2., 1., 0.]);

    // A run with both records them in its card. (Whole runs are not compared weight for weight:
    // libtorch's global generator is shared with the tests running alongside.)
    let dir = tempfile::tempdir().unwrap();
    let data = shapes(dir.path(), 8, false);
    let a = train_quietly(
        &TrainConfig {
            epochs: 1,
            batch_size: 8,
            ..config.clone()
        },
        &data,
    );
    assert!(a.card.training.augment && a.card.training.hflip);
}
