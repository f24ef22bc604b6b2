//! Deterministic pseudo-random numbers shared by the importers' patient splits and the phantom
//! generator (re-exported as `synth::SplitMix64`), so a seed gives the same split and the same
//! phantom bytes on every machine.

/// Deterministic pseudo-random numbers (SplitMix64, Steele et al., OOPSLA 2014): same seed, same bytes.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }
    /// The internal state (to persist a stream and continue it with [`SplitMix64::from_state`]).
    pub fn state(&self) -> u64 {
        self.0
    }

    /// Continue a stream from a saved [`SplitMix64::state`].
    pub fn from_state(state: u64) -> Self {
        SplitMix64(state)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}
