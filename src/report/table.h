// Metric tables as aligned text (terminal), CSV (RFC 4180), Markdown and HTML. Cells are strings; the
// caller formats numbers (format_number in ticks.h) so every output shows the same digits.
#pragma once
#include <string>
#include <string_view>
#include <vector>

namespace qad::report {

enum class Align { kAuto, kLeft, kRight };

struct Table {
  std::vector<std::string> columns;
  std::vector<std::vector<std::string>> rows;  // short rows are padded with empty cells
  std::vector<Align> align;                    // per column; kAuto = right when every cell looks numeric
};

// Columns padded to their widest cell (UTF-8 aware), two spaces apart, a dashed rule under the header.
std::string to_text(const Table& table);
// Fields with a comma, quote, CR or LF are quoted, quotes doubled; lines end with \n.
std::string to_csv(const Table& table);
// A GitHub-flavoured Markdown table; "|" in cells is escaped.
std::string to_markdown(const Table& table);
// A <table> with <thead>/<tbody>; numeric columns get class="num". Cells are HTML-escaped.
std::string to_html(const Table& table);

// Parses CSV written by to_csv (or any RFC 4180 CSV): the first record becomes the columns. Throws
// qad::Error naming `source` and the line for an unterminated quote or a ragged record.
Table parse_csv(std::string_view text, std::string_view source = "<csv>");

// True when the cell is empty, a number ("1.5", "-2e-3", "nan", "inf") or a number with a unit suffix
// like "12k" or "3.1%": such columns are right-aligned.
bool looks_numeric(std::string_view cell);

}  // namespace qad::report
