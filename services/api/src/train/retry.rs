//! A retried submission (the same `Idempotency-Key`) is the request that recorded its job only
//! when it asks for the same settings.

use gantry_contracts::jobs::TrainParams;

/// Learning rates a job got by default before the current one: a retry that names none matches
/// a job submitted then.
const EARLIER_DEFAULT_LEARNING_RATES: [f64; 1] = [0.001];

/// Whether a retry asking for `asked` is the request that recorded `stored`: the same settings,
/// the floats to within rounding as they come back from the store. A retry that names no learning
/// rate (`named_rate` false) also matches a job recorded under an earlier default.
pub(super) fn same_params(stored: &TrainParams, asked: &TrainParams, named_rate: bool) -> bool {
    let close = |x: f64, y: f64| (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1e-12);
    let rate = close(stored.learning_rate, asked.learning_rate)
        || (!named_rate
            && EARLIER_DEFAULT_LEARNING_RATES
                .iter()
                .any(|&r| close(stored.learning_rate, r)));
    stored.epochs == asked.epochs
        && stored.batch_size == asked.batch_size
        && stored.image_size == asked.image_size
        && (stored.augment, stored.hflip, stored.bf16) == (asked.augment, asked.hflip, asked.bf16)
        && rate
        && close(stored.validation_split, asked.validation_split)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retry_matches_its_job_and_an_unnamed_rate_matches_an_earlier_default() {
        let now = TrainParams::default();
        let before = TrainParams {
            learning_rate: 0.001,
            ..TrainParams::default()
        };
        // As the store gives the float back.
        let stored = TrainParams {
            learning_rate: now.learning_rate * (1.0 + 1e-12),
            ..TrainParams::default()
        };
        assert!(same_params(&stored, &now, false));
        assert!(same_params(&stored, &now, true));
        // Submitted under the earlier default, retried naming no rate: the same request.
        assert!(same_params(&before, &now, false));
        // Naming 0.003 against a job that ran at 0.001 is another request.
        assert!(!same_params(&before, &now, true));
        let other_rate = TrainParams {
            learning_rate: 0.05,
            ..TrainParams::default()
        };
        assert!(!same_params(&other_rate, &now, false));
        let other_epochs = TrainParams {
            epochs: 3,
            ..TrainParams::default()
        };
        assert!(!same_params(&other_epochs, &now, false));
    }
}
