// Tables: exact terminal layout, CSV round trip through the RFC 4180 parser, Markdown and HTML escaping.
#include <gtest/gtest.h>

#include "report/table.h"
#include "util/error.h"

namespace {
using namespace qad::report;

Table sample() {
  Table t;
  t.columns = {"run", "kl", "note"};
  t.rows = {{"ptq", "0.452", "plain"}, {"cka-qad", "0.049", "a, \"quoted\"\nmultiline ü"}, {"qad", "nan"}};
  return t;
}

TEST(Table, TextAlignsNumbersRightAndPadsShortRows) {
  Table t;
  t.columns = {"run", "kl"};
  t.rows = {{"ptq", "0.452"}, {"cka-qad", "12k"}, {"ü", "—"}};
  EXPECT_EQ(to_text(t),
            "run         kl\n"
            "-------  -----\n"
            "ptq      0.452\n"
            "cka-qad    12k\n"
            "ü            —\n");
}

TEST(Table, CsvRoundTripsAwkwardCells) {
  const Table t = sample();
  const std::string csv = to_csv(t);
  EXPECT_EQ(csv,
            "run,kl,note\n"
            "ptq,0.452,plain\n"
            "cka-qad,0.049,\"a, \"\"quoted\"\"\nmultiline ü\"\n"
            "qad,nan,\n");
  const Table back = parse_csv(csv);
  EXPECT_EQ(back.columns, t.columns);
  ASSERT_EQ(back.rows.size(), 3u);
  EXPECT_EQ(back.rows[1], t.rows[1]);
  EXPECT_EQ(back.rows[2], (std::vector<std::string>{"qad", "nan", ""}));
  // CRLF line ends and a missing final newline read the same.
  EXPECT_EQ(parse_csv("a,b\r\n1,2").rows, (std::vector<std::vector<std::string>>{{"1", "2"}}));
}

TEST(Table, CsvErrorsNameTheSourceAndLine) {
  try {
    parse_csv("a,b\n1,\"open\n2,3\n", "cka.csv");
    FAIL() << "no exception";
  } catch (const qad::Error& e) {
    EXPECT_NE(std::string(e.what()).find("cka.csv:2"), std::string::npos) << e.what();
  }
  EXPECT_THROW(parse_csv("a,b\n1,2,3\n", "x.csv"), qad::Error);
}

TEST(Table, MarkdownAndHtmlEscape) {
  Table t;
  t.columns = {"run", "kl"};
  t.rows = {{"a|b <c>", "0.5"}};
  EXPECT_EQ(to_markdown(t), "| run | kl |\n| --- | ---: |\n| a\\|b <c> | 0.5 |\n");
  const std::string html = to_html(t);
  EXPECT_NE(html.find("<td>a|b &lt;c&gt;</td><td class=\"num\">0.5</td>"), std::string::npos) << html;
  EXPECT_NE(html.find("<th class=\"num\">kl</th>"), std::string::npos);
}

TEST(Table, NumericDetection) {
  for (const char* s : {"1", "-2.5", "1e-3", "3.1%", "12k", "1.5M", "nan", "-inf", "", "—", "1,234"}) {
    EXPECT_TRUE(looks_numeric(s)) << s;
  }
  for (const char* s : {"ptq", "v1.2", "e5", "12 kB", "1.5 tokens"}) EXPECT_FALSE(looks_numeric(s)) << s;
}

}  // namespace
