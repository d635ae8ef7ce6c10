// A self-contained byte-level tokenizer for the demo model: 256 byte tokens (GPT-2's byte-to-character map, no
// merges) plus <|endoftext|>, <|im_start|>, <|im_end|>, with a ChatML chat template. Written as HF
// tokenizer.json + tokenizer_config.json so the demo's checkpoints load anywhere. Torch-free.
#pragma once
#include <filesystem>

namespace qad::demo {

inline constexpr int kByteVocab = 259;  // 256 bytes + 3 specials
inline constexpr int kEndOfText = 256, kImStart = 257, kImEnd = 258;

void write_byte_tokenizer(const std::filesystem::path& dir);

}  // namespace qad::demo
