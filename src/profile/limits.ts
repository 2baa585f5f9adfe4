// Tested by test/profile/invalid-profiles.test.ts.
/** The bounds a profile must respect (docs/profile-format.md §3, "Reader checks"). */
export const PROFILE_LIMITS = {
  /** model.layers, kv_heads and head_dim: the blob header holds them as u16. */
  maxShape: 0xffff,
  /** settings.sink and window: u32 in the blob header. */
  maxRaw: 0xffffffff,
  /** The manifest file, in bytes. */
  maxManifestBytes: 16 * 1024 * 1024,
  /** The tensor file's JSON header: at most base + perTensor × tensors bytes. */
  headerBaseBytes: 4096,
  headerPerTensorBytes: 512,
  /** |mean|, |lo|, |hi| (KV values are fp16-sized; anything near this is corruption). */
  maxAbs: 1e12,
  /** max |VᵀV − I| over the Gram matrix entries. */
  orthoTolerance: 1e-4,
  /** readProfile computes the whole Gram matrix when p·r² ≤ this (otherwise exact column norms, sampled pairs and probes). */
  fullOrthoWork: 2 ** 22,
  /** validate computes the whole Gram matrix when p·r² ≤ this. */
  validateOrthoWork: 2 ** 31,
} as const;
