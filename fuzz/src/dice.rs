//! A tiny byte-driven chooser for structure-aware fuzzing: each call consumes input
//! bytes to pick among a few interesting values, so the fuzzer mutates choices rather
//! than JSON syntax.
//!
//! Invariant: once the input is exhausted every choice is the first option and every
//! count is zero, so generation always terminates and is a pure function of the input.

/// Choices drawn from fuzz input bytes.
pub struct Dice<'a> {
    data: &'a [u8],
}

impl<'a> Dice<'a> {
    /// Choices drawn from `data`.
    pub fn new(data: &'a [u8]) -> Dice<'a> {
        Dice { data }
    }

    /// The next byte (0 once exhausted).
    pub fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            usize::from(self.byte()) % n
        }
    }

    /// A coin flip.
    pub fn flag(&mut self) -> bool {
        self.byte() & 1 == 1
    }

    /// One of `options` (which must not be empty).
    pub fn pick<T: Clone>(&mut self, options: &[T]) -> T {
        let i = self.below(options.len());
        options[i].clone()
    }

    /// `Some(pick)` or `None`.
    pub fn maybe<T: Clone>(&mut self, options: &[T]) -> Option<T> {
        self.flag().then(|| self.pick(options))
    }

    /// Up to `max` items made by `f`.
    pub fn many<T>(&mut self, max: usize, mut f: impl FnMut(&mut Dice<'a>) -> T) -> Vec<T> {
        let n = self.below(max + 1);
        (0..n).map(|_| f(self)).collect()
    }
}
