/**
 * The only runtime globals the pure modules (src/policy) may use beyond
 * ECMAScript itself: the WHATWG text codecs, present in every JS runtime.
 * Used by tsconfig.pure.json, which compiles src/policy with no Node types
 * so that any use of Node APIs there fails to compile.
 */
interface TextDecodeOptions {
  stream?: boolean;
}
interface TextDecoderOptions {
  fatal?: boolean;
  ignoreBOM?: boolean;
}
declare class TextDecoder {
  constructor(label?: string, options?: TextDecoderOptions);
  decode(input?: Uint8Array, options?: TextDecodeOptions): string;
}
declare class TextEncoder {
  encode(input?: string): Uint8Array;
}
