//! Sequence packing: examples grouped into micro-batches of at most `budget` input tokens.
//! The examples of a micro-batch share every matrix product but each attends only to
//! itself (the decoder runs them as separate sequences), so packing changes no result,
//! only how much work one forward pass does.

use crate::sample::Rng;

/// First-fit packing of examples (given by their input lengths) in `order`.
pub fn pack(lens: &[usize], order: &[usize], budget: usize) -> Vec<Vec<usize>> {
    let mut bins: Vec<(usize, Vec<usize>)> = Vec::new();
    for &i in order {
        let n = lens[i];
        match bins.iter_mut().find(|(used, _)| used + n <= budget) {
            Some((used, items)) => {
                *used += n;
                items.push(i);
            }
            None => bins.push((n, vec![i])),
        }
    }
    bins.into_iter().map(|(_, items)| items).collect()
}

/// The micro-batches of epoch `epoch`: examples shuffled by `seed` and the epoch, packed.
pub fn epoch_batches(lens: &[usize], budget: usize, seed: u64, epoch: u64) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lens.len()).collect();
    let mut rng = Rng::new(seed ^ epoch.wrapping_mul(0x9e3779b97f4a7c15));
    for i in (1..order.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    pack(lens, &order, budget)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_within_budget_and_keeps_everything() {
        let lens = [5, 9, 3, 7, 2, 8, 10];
        let bins = epoch_batches(&lens, 10, 1, 0);
        let mut seen: Vec<usize> = bins.iter().flatten().copied().collect();
        seen.sort();
        assert_eq!(seen, (0..lens.len()).collect::<Vec<_>>());
        for b in &bins {
            assert!(b.iter().map(|&i| lens[i]).sum::<usize>() <= 10);
        }
        assert!(bins.len() < lens.len(), "some examples share a batch");
        assert_eq!(bins, epoch_batches(&lens, 10, 1, 0), "deterministic");
        assert_ne!(epoch_batches(&lens, 10, 1, 0), epoch_batches(&lens, 10, 1, 1));
    }
}
