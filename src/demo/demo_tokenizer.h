// The demo model's tokenizer: byte-level BPE (GPT-2's byte map and pre-tokenizer regex) whose merges build one
// token per word of the arithmetic chats ("What", " carry", " result", " 7", ...), plus the ChatML markers and
// <think> / </think> as added tokens. Digits stay one token each. The byte fallback keeps any text encodable;
// the merges cut a worked chat from ~140 byte tokens to ~55, which is most of what makes `qad demo` fit a CPU.
// Written as HF tokenizer.json + tokenizer_config.json (a ChatML template), so the demo's checkpoints load with
// qad's tokenizer and with HF's. Torch-free.
#pragma once
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace qad::demo {

// Fixed ids of the added tokens (the vocabulary starts with them).
inline constexpr int32_t kEndOfText = 0, kImStart = 1, kImEnd = 2, kThinkOpen = 3, kThinkClose = 4;

// The words that become single tokens (as written in text, with their leading space where they have one).
const std::vector<std::string>& demo_words();

// Number of ids (added tokens + 256 bytes + merged tokens).
int64_t demo_vocab_size();

void write_demo_tokenizer(const std::filesystem::path& dir);

}  // namespace qad::demo
