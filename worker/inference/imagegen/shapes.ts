// Sizes shared by the imagegen-tiny graphs and the JS pipeline that drives them.

/** Rows of the token embedding table. Re-exported from the tokenizer, which hashes into it. */
export { VOCAB_SIZE } from "./tokenizer.js";
/** Width of a token embedding. */
export const EMBED_DIM = 32;
/** Width of the conditioning vector the prompt encoder produces. */
export const COND_DIM = 32;
/** Channels of the latent, as in Stable Diffusion's VAE. */
export const LATENT_CHANNELS = 4;
/** Pixels per latent cell along each axis (the VAE's downsampling factor). */
export const LATENT_SCALE = 8;
/** Soft shapes the denoiser composes over the background. */
export const SHAPE_LAYERS = 3;
