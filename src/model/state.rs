//! Per-sequence recurrent state, kept apart from the weights.
//!
//! A [`State`] holds the hidden (and, for LSTM, cell) vectors of every layer and direction
//! for a batch of independent sequences. The service batches the states of many streams
//! into one, steps them together and splits them back; nothing here knows about streams.
use tch::Tensor;

use super::ModelError;

/// Recurrent state for `batch` independent sequences.
///
/// Layout follows PyTorch: `h` (and `c`) are `[layers × directions, batch, hidden]`.
#[derive(Debug)]
pub struct State {
    /// Hidden state of every layer and direction.
    pub h: Tensor,
    /// LSTM cell state, same shape as `h`; `None` for RNN and GRU.
    pub c: Option<Tensor>,
}

impl State {
    /// Number of sequences this state carries.
    pub fn batch_size(&self) -> i64 {
        self.h.size()[1]
    }

    /// A second handle on the same tensors (no copy).
    pub fn shallow_clone(&self) -> State {
        State { h: self.h.shallow_clone(), c: self.c.as_ref().map(Tensor::shallow_clone) }
    }

    /// A deep copy cut from the autograd graph: what truncated BPTT carries between windows.
    pub fn detach(&self) -> State {
        State { h: self.h.detach().copy(), c: self.c.as_ref().map(|c| c.detach().copy()) }
    }

    /// Joins the states of several batches into one, in order.
    pub fn cat(states: &[State]) -> Result<State, ModelError> {
        let Some(first) = states.first() else {
            return Err(ModelError::Shape("cannot concatenate zero states".into()));
        };
        let shape = first.h.size();
        for s in states {
            let other = s.h.size();
            if other[0] != shape[0] || other[2] != shape[2] || s.c.is_some() != first.c.is_some() {
                return Err(ModelError::Shape(format!(
                    "states of different networks cannot be concatenated: {shape:?} and {other:?}"
                )));
            }
        }
        let hs: Vec<&Tensor> = states.iter().map(|s| &s.h).collect();
        let c = if first.c.is_some() {
            let cs: Vec<&Tensor> = states.iter().filter_map(|s| s.c.as_ref()).collect();
            Some(Tensor::cat(&cs, 1))
        } else {
            None
        };
        Ok(State { h: Tensor::cat(&hs, 1), c })
    }

    /// Splits a batched state into one state per sequence (batch size 1 each).
    pub fn split(&self) -> Vec<State> {
        let hs = self.h.split(1, 1);
        match &self.c {
            Some(c) => hs
                .into_iter()
                .zip(c.split(1, 1))
                .map(|(h, c)| State { h: h.contiguous(), c: Some(c.contiguous()) })
                .collect(),
            None => hs.into_iter().map(|h| State { h: h.contiguous(), c: None }).collect(),
        }
    }

    /// The states of the sequences at `indices`, in that order.
    pub fn select(&self, indices: &[i64]) -> Result<State, ModelError> {
        let n = self.batch_size();
        if let Some(bad) = indices.iter().find(|i| !(0..n).contains(*i)) {
            return Err(ModelError::Shape(format!("sequence index {bad} out of range 0..{n}")));
        }
        let idx = Tensor::from_slice(indices).to_device(self.h.device());
        Ok(State { h: self.h.index_select(1, &idx), c: self.c.as_ref().map(|c| c.index_select(1, &idx)) })
    }
}
