// Property lookup and NFC/NFD from the generated tables in unicode_data.inc.
#include "tokenizer/unicode.h"

#include <algorithm>
#include <array>
#include <vector>

#include "tokenizer/unicode_data.inc"
#include "tokenizer/utf8.h"

namespace qad::tokenizer::unicode {
namespace {

constexpr uint32_t kMaxCp = 0x110000;

// Two-stage property table: stage1[cp >> 8] selects a 256-entry block of stage2. Built once from ranges.
struct PropTable {
  std::vector<uint16_t> stage1;
  std::vector<uint8_t> stage2;
  PropTable() {
    std::vector<uint8_t> flat(kMaxCp, 0);
    auto mark = [&](const auto& ranges, uint8_t bit) {
      for (const auto& r : ranges)
        for (uint32_t c = r[0]; c <= r[1]; ++c) flat[c] |= bit;
    };
    mark(unicode_data::kLetter, kLetter);
    mark(unicode_data::kNumber, kNumber);
    mark(unicode_data::kMark, kMark);
    mark(unicode_data::kWhiteSpace, kWhiteSpace);
    mark(unicode_data::kNfcMaybeChanges, kNfcMaybe);
    stage1.resize(kMaxCp >> 8);
    for (uint32_t b = 0; b < (kMaxCp >> 8); ++b) {
      const uint8_t* blk = flat.data() + (b << 8);
      uint16_t found = UINT16_MAX;
      for (size_t k = 0; k < stage2.size() / 256; ++k) {
        if (std::equal(blk, blk + 256, stage2.data() + k * 256)) {
          found = static_cast<uint16_t>(k);
          break;
        }
      }
      if (found == UINT16_MAX) {
        found = static_cast<uint16_t>(stage2.size() / 256);
        stage2.insert(stage2.end(), blk, blk + 256);
      }
      stage1[b] = found;
    }
  }
};

const PropTable& prop_table() {
  static const PropTable t;
  return t;
}

constexpr uint32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr uint32_t kLCount = 19, kVCount = 21, kTCount = 28, kNCount = kVCount * kTCount, kSCount = kLCount * kNCount;

void decompose_into(uint32_t cp, std::vector<uint32_t>& out) {
  if (cp >= kSBase && cp < kSBase + kSCount) {
    const uint32_t s = cp - kSBase;
    out.push_back(kLBase + s / kNCount);
    out.push_back(kVBase + (s % kNCount) / kTCount);
    if (s % kTCount) out.push_back(kTBase + s % kTCount);
    return;
  }
  const auto& idx = unicode_data::kDecompIndex;
  const auto* it = std::lower_bound(std::begin(idx), std::end(idx), cp,
                                    [](const uint32_t(&e)[3], uint32_t c) { return e[0] < c; });
  if (it != std::end(idx) && (*it)[0] == cp) {
    out.insert(out.end(), unicode_data::kDecompData + (*it)[1], unicode_data::kDecompData + (*it)[1] + (*it)[2]);
  } else {
    out.push_back(cp);
  }
}

// 0 when the pair does not compose.
uint32_t compose(uint32_t a, uint32_t b) {
  if (a >= kLBase && a < kLBase + kLCount && b >= kVBase && b < kVBase + kVCount)
    return kSBase + ((a - kLBase) * kVCount + (b - kVBase)) * kTCount;
  if (a >= kSBase && a < kSBase + kSCount && (a - kSBase) % kTCount == 0 && b > kTBase && b < kTBase + kTCount)
    return a + (b - kTBase);
  const auto& tab = unicode_data::kCompose;
  const auto* it = std::lower_bound(std::begin(tab), std::end(tab), std::pair<uint32_t, uint32_t>{a, b},
                                    [](const uint32_t(&e)[3], const std::pair<uint32_t, uint32_t>& k) {
                                      return e[0] < k.first || (e[0] == k.first && e[1] < k.second);
                                    });
  if (it != std::end(tab) && (*it)[0] == a && (*it)[1] == b) return (*it)[2];
  return 0;
}

std::vector<uint32_t> decompose_ordered(std::string_view s) {
  std::vector<uint32_t> cps;
  cps.reserve(s.size());
  for (size_t i = 0; i < s.size();) decompose_into(utf8::decode(s, i), cps);
  // Canonical ordering: stable sort of each run of non-starters by combining class.
  for (size_t i = 0; i < cps.size();) {
    if (combining_class(cps[i]) == 0) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < cps.size() && combining_class(cps[j]) != 0) ++j;
    std::stable_sort(cps.begin() + static_cast<ptrdiff_t>(i), cps.begin() + static_cast<ptrdiff_t>(j),
                     [](uint32_t a, uint32_t b) { return combining_class(a) < combining_class(b); });
    i = j;
  }
  return cps;
}

}  // namespace

uint8_t props(uint32_t cp) {
  if (cp >= kMaxCp) return 0;
  const auto& t = prop_table();
  return t.stage2[(static_cast<size_t>(t.stage1[cp >> 8]) << 8) | (cp & 0xFF)];
}

uint8_t combining_class(uint32_t cp) {
  if (cp < 0x300) return 0;
  const auto& tab = unicode_data::kCombiningClass;
  const auto* it = std::upper_bound(std::begin(tab), std::end(tab), cp,
                                    [](uint32_t c, const uint32_t(&e)[3]) { return c < e[0]; });
  if (it == std::begin(tab)) return 0;
  --it;
  return cp <= (*it)[1] ? static_cast<uint8_t>((*it)[2]) : 0;
}

bool is_nfc_quick(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    if (static_cast<unsigned char>(s[i]) < 0x80) {
      ++i;
      continue;
    }
    if (props(utf8::decode(s, i)) & kNfcMaybe) return false;
  }
  return true;
}

std::string nfd(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (uint32_t c : decompose_ordered(s)) utf8::append(out, c);
  return out;
}

std::string nfc(std::string_view s) {
  if (is_nfc_quick(s)) return std::string(s);
  std::vector<uint32_t> cps = decompose_ordered(s);
  if (!cps.empty()) {
    // Canonical composition (UAX #15 reference algorithm).
    size_t starter = 0, out = 1;
    int last_class = combining_class(cps[0]) ? 256 : 0;
    for (size_t i = 1; i < cps.size(); ++i) {
      const uint32_t c = cps[i];
      const int cls = combining_class(c);
      const uint32_t comp = compose(cps[starter], c);
      if (comp && (last_class < cls || last_class == 0)) {
        cps[starter] = comp;
        continue;
      }
      if (cls == 0) starter = out;
      last_class = cls;
      cps[out++] = c;
    }
    cps.resize(out);
  }
  std::string res;
  res.reserve(s.size());
  for (uint32_t c : cps) utf8::append(res, c);
  return res;
}

}  // namespace qad::tokenizer::unicode
