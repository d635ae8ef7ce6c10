// Table rendering and CSV parsing (see table.h).
#include "report/table.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>

#include "report/svg_common.h"
#include "util/error.h"

namespace qad::report {
namespace {

size_t display_width(std::string_view s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;  // count code points, not bytes
  return n;
}

std::string cell(const Table& t, size_t r, size_t c) { return c < t.rows[r].size() ? t.rows[r][c] : ""; }

std::vector<bool> right_aligned(const Table& t) {
  std::vector<bool> right(t.columns.size(), false);
  for (size_t c = 0; c < t.columns.size(); ++c) {
    const Align a = c < t.align.size() ? t.align[c] : Align::kAuto;
    if (a != Align::kAuto) {
      right[c] = a == Align::kRight;
      continue;
    }
    bool numeric = !t.rows.empty(), any = false;
    for (size_t r = 0; r < t.rows.size(); ++r) {
      const std::string v = cell(t, r, c);
      numeric = numeric && looks_numeric(v);
      any = any || !v.empty();
    }
    right[c] = numeric && any;
  }
  return right;
}

std::string pad(std::string_view s, size_t width, bool right) {
  const std::string fill(width - std::min(width, display_width(s)), ' ');
  return right ? fill + std::string(s) : std::string(s) + fill;
}

std::string csv_field(std::string_view s) {
  if (s.find_first_of(",\"\r\n") == std::string_view::npos) return std::string(s);
  std::string out = "\"";
  for (char c : s) out += c == '"' ? std::string("\"\"") : std::string(1, c);
  return out + "\"";
}

}  // namespace

bool looks_numeric(std::string_view s) {
  if (s.empty() || s == "nan" || s == "inf" || s == "-inf" || s == "-" || s == "—") return true;
  size_t i = 0;
  if (s[i] == '-' || s[i] == '+') ++i;
  bool digits = false;
  while (i < s.size() && (std::isdigit(static_cast<unsigned char>(s[i])) || s[i] == '.' || s[i] == ',')) {
    digits = digits || std::isdigit(static_cast<unsigned char>(s[i]));
    ++i;
  }
  if (!digits) return false;
  if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
    ++i;
    if (i < s.size() && (s[i] == '-' || s[i] == '+')) ++i;
    while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) ++i;
  }
  const std::string_view suffix = s.substr(i);
  return suffix.empty() || suffix == "%" || suffix == "k" || suffix == "M" || suffix == "G" || suffix == "x" ||
         suffix == " GB" || suffix == " s";
}

std::string to_text(const Table& t) {
  std::vector<size_t> width(t.columns.size());
  for (size_t c = 0; c < t.columns.size(); ++c) {
    width[c] = display_width(t.columns[c]);
    for (size_t r = 0; r < t.rows.size(); ++r) width[c] = std::max(width[c], display_width(cell(t, r, c)));
  }
  const auto right = right_aligned(t);
  auto line = [&](auto get) {
    std::string s;
    for (size_t c = 0; c < t.columns.size(); ++c) {
      if (c) s += "  ";
      s += pad(get(c), width[c], right[c]);
    }
    while (!s.empty() && s.back() == ' ') s.pop_back();
    return s + "\n";
  };
  std::string out = line([&](size_t c) { return t.columns[c]; });
  out += line([&](size_t c) { return std::string(width[c], '-'); });
  for (size_t r = 0; r < t.rows.size(); ++r) out += line([&](size_t c) { return cell(t, r, c); });
  return out;
}

std::string to_csv(const Table& t) {
  auto record = [&](auto get) {
    std::string s;
    for (size_t c = 0; c < t.columns.size(); ++c) {
      if (c) s += ',';
      s += csv_field(get(c));
    }
    return s + "\n";
  };
  std::string out = record([&](size_t c) { return t.columns[c]; });
  for (size_t r = 0; r < t.rows.size(); ++r) out += record([&](size_t c) { return cell(t, r, c); });
  return out;
}

std::string to_markdown(const Table& t) {
  auto esc = [](std::string s) {
    std::string out;
    for (char c : s) {
      if (c == '|') out += "\\|";
      else if (c == '\n' || c == '\r') out += ' ';
      else out += c;
    }
    return out;
  };
  const auto right = right_aligned(t);
  std::string out = "|";
  // Appends piecewise: `" " + esc(x) + " |"` trips a GCC 12 -Wrestrict false positive.
  auto add_cell = [&](const std::string& s) {
    out += ' ';
    out += esc(s);
    out += " |";
  };
  for (const auto& col : t.columns) add_cell(col);
  out += "\n|";
  for (size_t c = 0; c < t.columns.size(); ++c) out += right[c] ? " ---: |" : " --- |";
  out += "\n";
  for (size_t r = 0; r < t.rows.size(); ++r) {
    out += "|";
    for (size_t c = 0; c < t.columns.size(); ++c) add_cell(cell(t, r, c));
    out += "\n";
  }
  return out;
}

std::string to_html(const Table& t) {
  const auto right = right_aligned(t);
  std::string out = "<table>\n<thead><tr>";
  for (size_t c = 0; c < t.columns.size(); ++c) {
    out += fmt::format("<th{}>{}</th>", right[c] ? " class=\"num\"" : "", xml_escape(t.columns[c]));
  }
  out += "</tr></thead>\n<tbody>\n";
  for (size_t r = 0; r < t.rows.size(); ++r) {
    out += "<tr>";
    for (size_t c = 0; c < t.columns.size(); ++c) {
      out += fmt::format("<td{}>{}</td>", right[c] ? " class=\"num\"" : "", xml_escape(cell(t, r, c)));
    }
    out += "</tr>\n";
  }
  return out + "</tbody>\n</table>\n";
}

Table parse_csv(std::string_view text, std::string_view source) {
  std::vector<std::vector<std::string>> records;
  std::vector<std::string> record;
  std::string field;
  size_t line = 1, record_line = 1;
  bool quoted = false, field_started = false;
  size_t i = 0;
  auto end_record = [&] {
    record.push_back(std::move(field));
    field.clear();
    records.push_back(std::move(record));
    record.clear();
    field_started = false;
  };
  while (i < text.size()) {
    const char c = text[i];
    if (quoted) {
      if (c == '"' && i + 1 < text.size() && text[i + 1] == '"') {
        field += '"';
        i += 2;
        continue;
      }
      if (c == '"') {
        quoted = false;
      } else {
        if (c == '\n') ++line;
        field += c;
      }
      ++i;
      continue;
    }
    if (c == '"' && field.empty() && !field_started) {
      quoted = field_started = true;
    } else if (c == ',') {
      record.push_back(std::move(field));
      field.clear();
      field_started = false;  // a trailing comma still ends the record with an empty field (record is non-empty)
    } else if (c == '\r' && i + 1 < text.size() && text[i + 1] == '\n') {
      // CRLF: handled at the \n
    } else if (c == '\n') {
      end_record();
      record_line = ++line;
    } else {
      field += c;
      field_started = true;
    }
    ++i;
  }
  QAD_CHECK(!quoted, "{}:{}: a quoted field is not closed before the end of the file; the file is truncated or "
            "a quote is not doubled", source, record_line);
  if (field_started || !field.empty() || !record.empty()) end_record();
  Table t;
  if (records.empty()) return t;
  t.columns = std::move(records.front());
  for (size_t r = 1; r < records.size(); ++r) {
    QAD_CHECK(records[r].size() == t.columns.size(), "{}: record {} has {} fields but the header has {}", source,
              r + 1, records[r].size(), t.columns.size());
    t.rows.push_back(std::move(records[r]));
  }
  return t;
}

}  // namespace qad::report
