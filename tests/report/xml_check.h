// A tiny XML reader for tests (no new dependencies): checks that a document is well-formed (one root,
// matched tags, quoted unique attributes, valid entities and names) and returns its elements in
// document order with attributes and direct text, entities decoded.
#pragma once
#include <cctype>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace qad::testing {

struct XmlElement {
  std::string name;
  std::map<std::string, std::string> attrs;
  std::string text;  // character data directly inside the element
  int depth = 0;
};

struct XmlDoc {
  std::vector<XmlElement> elements;
  std::string error;  // empty = well-formed

  std::vector<const XmlElement*> all(std::string_view name) const {
    std::vector<const XmlElement*> out;
    for (const auto& e : elements) {
      if (e.name == name) out.push_back(&e);
    }
    return out;
  }
};

namespace xml_detail {

inline bool name_start(char c) { return std::isalpha(static_cast<unsigned char>(c)) || c == '_' || c == ':'; }
inline bool name_char(char c) {
  return name_start(c) || std::isdigit(static_cast<unsigned char>(c)) || c == '-' || c == '.';
}

// Decodes entities in s; returns nullopt on a malformed or unknown one, or a bare '<'.
inline std::optional<std::string> decode(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '<') return std::nullopt;
    if (s[i] != '&') {
      out += s[i];
      continue;
    }
    const size_t semi = s.find(';', i);
    if (semi == std::string_view::npos) return std::nullopt;
    const std::string_view ent = s.substr(i + 1, semi - i - 1);
    if (ent == "amp") out += '&';
    else if (ent == "lt") out += '<';
    else if (ent == "gt") out += '>';
    else if (ent == "quot") out += '"';
    else if (ent == "apos") out += '\'';
    else if (ent.size() >= 2 && ent[0] == '#') {
      const bool hex = ent[1] == 'x';
      const std::string digits(ent.substr(hex ? 2 : 1));
      if (digits.empty() || digits.find_first_not_of(hex ? "0123456789abcdefABCDEF" : "0123456789") != std::string::npos)
        return std::nullopt;
      const unsigned long cp = std::stoul(digits, nullptr, hex ? 16 : 10);
      if (cp < 0x80) out += static_cast<char>(cp);
      else out += '?';  // tests only look at ASCII references
    } else {
      return std::nullopt;
    }
    i = semi;
  }
  return out;
}

}  // namespace xml_detail

inline XmlDoc parse_xml(std::string_view s) {
  using namespace xml_detail;
  XmlDoc doc;
  std::vector<size_t> stack;  // indices into doc.elements
  int roots = 0;
  size_t i = 0;
  auto fail = [&](const std::string& what) {
    doc.error = what + " at byte " + std::to_string(i);
    return doc;
  };
  while (i < s.size()) {
    if (s[i] != '<') {
      const size_t next = std::min(s.find('<', i), s.size());
      const auto text = decode(s.substr(i, next - i));
      if (!text) return fail("bad character data or entity");
      if (stack.empty()) {
        if (text->find_first_not_of(" \t\r\n") != std::string::npos) return fail("text outside the root element");
      } else {
        doc.elements[stack.back()].text += *text;
      }
      i = next;
      continue;
    }
    if (s.substr(i, 4) == "<!--") {
      const size_t end = s.find("-->", i + 4);
      if (end == std::string_view::npos) return fail("unterminated comment");
      i = end + 3;
      continue;
    }
    if (s.substr(i, 2) == "<?") {
      const size_t end = s.find("?>", i);
      if (end == std::string_view::npos) return fail("unterminated processing instruction");
      i = end + 2;
      continue;
    }
    if (s.substr(i, 2) == "</") {
      size_t j = i + 2;
      while (j < s.size() && name_char(s[j])) ++j;
      const std::string name(s.substr(i + 2, j - i - 2));
      while (j < s.size() && std::isspace(static_cast<unsigned char>(s[j]))) ++j;
      if (j >= s.size() || s[j] != '>') return fail("bad end tag");
      if (stack.empty() || doc.elements[stack.back()].name != name) return fail("mismatched end tag </" + name + ">");
      stack.pop_back();
      i = j + 1;
      continue;
    }
    // Start tag.
    size_t j = i + 1;
    if (j >= s.size() || !name_start(s[j])) return fail("bad tag name");
    while (j < s.size() && name_char(s[j])) ++j;
    XmlElement e;
    e.name = std::string(s.substr(i + 1, j - i - 1));
    e.depth = static_cast<int>(stack.size());
    bool self_closing = false;
    for (;;) {
      const size_t before = j;
      while (j < s.size() && std::isspace(static_cast<unsigned char>(s[j]))) ++j;
      if (j >= s.size()) return fail("unterminated start tag");
      if (s[j] == '>') {
        ++j;
        break;
      }
      if (s.substr(j, 2) == "/>") {
        j += 2;
        self_closing = true;
        break;
      }
      if (j == before) return fail("attributes must be separated by spaces");
      if (!name_start(s[j])) return fail("bad attribute name");
      size_t k = j;
      while (k < s.size() && name_char(s[k])) ++k;
      const std::string attr(s.substr(j, k - j));
      if (k >= s.size() || s[k] != '=') return fail("attribute " + attr + " has no value");
      ++k;
      if (k >= s.size() || (s[k] != '"' && s[k] != '\'')) return fail("attribute " + attr + " is not quoted");
      const char q = s[k];
      const size_t end = s.find(q, k + 1);
      if (end == std::string_view::npos) return fail("unterminated attribute value");
      const auto value = decode(s.substr(k + 1, end - k - 1));
      if (!value) return fail("bad attribute value for " + attr);
      if (!e.attrs.emplace(attr, *value).second) return fail("duplicate attribute " + attr);
      j = end + 1;
    }
    if (stack.empty() && ++roots > 1) return fail("more than one root element");
    doc.elements.push_back(std::move(e));
    if (!self_closing) stack.push_back(doc.elements.size() - 1);
    i = j;
  }
  if (!stack.empty()) return fail("unclosed element <" + doc.elements[stack.back()].name + ">");
  if (roots == 0) return fail("no root element");
  return doc;
}

}  // namespace qad::testing
