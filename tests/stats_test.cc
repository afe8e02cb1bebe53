// stats_test.cc — pymalloc's statistics (alloc/stats.c): the CPython 3.11
// sys._debugmallocstats() layout line for line, numbers that close (Total == arenas x arena
// size), per-class rows that follow what the test allocates, sys.getallocatedblocks(), the
// JSON form with snprintf semantics, and the PYTHONMALLOCSTATS hook on new arenas.
//
// The report is parsed back, not compared with a golden file: the numbers depend on what
// ran before, the structure does not. The statistics and the domains require the GIL: each
// test holds it for its whole body (GilScope), as do SetUp and TearDown; one thread.

#include <stdio.h>
#include <stdlib.h>

#include <cctype>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <regex>
#include <string>
#include <utility>
#include <vector>

#include "alloc/internal/pymalloc.h"
#include "alloc/pymalloc_mt.h"
#include "gtest/gtest.h"
#include "tests/support/gil_scope.h"

namespace {

// ---- the text report, parsed ----------------------------------------------------------

std::string PrintStats() PM_GIL_REQUIRED {
    char *text = nullptr;
    size_t length = 0;
    FILE *out = open_memstream(&text, &length);
    if (out == nullptr) return "";
    pm_print_stats(out);
    fclose(out);
    std::string result(text, length);
    free(text);
    return result;
}

std::vector<std::string> SplitLines(const std::string &text) {
    std::vector<std::string> lines;
    size_t start = 0;
    while (start < text.size()) {
        size_t end = text.find('\n', start);
        if (end == std::string::npos) end = text.size();
        lines.push_back(text.substr(start, end - start));
        start = end + 1;
    }
    return lines;
}

// Parses "1,234,567" (groups of three after the first, no stray zeros).
bool ParseGrouped(const std::string &s, size_t *value) {
    static const std::regex grouped("(0|[1-9][0-9]{0,2}(,[0-9]{3})*)");
    if (!std::regex_match(s, grouped)) return false;
    size_t v = 0;
    for (char ch : s) {
        if (ch != ',') v = v * 10 + static_cast<size_t>(ch - '0');
    }
    *value = v;
    return true;
}

struct ValueLine {
    std::string label;
    size_t value = 0;
};

// "label<pad to 35>=<value right-aligned in 21>", exactly as CPython's printone().
::testing::AssertionResult ParseValueLine(const std::string &line, ValueLine *out) {
    if (line.size() != 35 + 1 + 21) {
        return ::testing::AssertionFailure() << "length " << line.size() << ": '" << line << "'";
    }
    if (line[35] != '=') return ::testing::AssertionFailure() << "no '=' at column 35: " << line;
    std::string label = line.substr(0, 35);
    size_t end = label.find_last_not_of(' ');
    if (end == std::string::npos) return ::testing::AssertionFailure() << "empty label: " << line;
    label.resize(end + 1);
    std::string field = line.substr(36);
    size_t digits = field.find_first_not_of(' ');
    if (digits == std::string::npos || digits == 0) {
        return ::testing::AssertionFailure() << "value not right-aligned in 21 columns: " << line;
    }
    if (!ParseGrouped(field.substr(digits), &out->value)) {
        return ::testing::AssertionFailure() << "value without thousands separators: " << line;
    }
    out->label = label;
    return ::testing::AssertionSuccess();
}

struct ClassRow {
    unsigned size_class = 0;
    size_t size = 0, pools = 0, in_use = 0, avail = 0;
};

struct Report {
    std::map<unsigned, ClassRow> rows;
    // Value lines by label, in three sections; "N arenas * M bytes/arena" and
    // "N unused pools * M bytes" are stored under those patterns with N and M kept apart.
    std::map<std::string, size_t> pool_section, map_section, reserve_section, descriptor_section;
    size_t arenas_in_label = 0, arena_size_in_label = 0;
    size_t unused_pools_in_label = 0, pool_size_in_label = 0;
};

// The labels, in order, that follow the class table (after one empty line), as CPython 3.11
// prints them, then our arena map counts and the pymalloc-mt reserve lines. "" stands for an
// empty line, "@" for a line that is not a value line (a section title).
const std::vector<std::string> kLayout = {
    "# arenas allocated total",
    "# arenas reclaimed",
    "# arenas highwater mark",
    "# arenas allocated current",
    "N arenas * M bytes/arena",
    "",
    "# bytes in allocated blocks",
    "# bytes in available blocks",
    "N unused pools * M bytes",
    "# bytes lost to pool headers",
    "# bytes lost to quantization",
    "# bytes lost to arena alignment",
    "Total",
    "",
    "@arena map counts",
    "# arena map leaf nodes",
    "",
    "# bytes lost to arena map root",
    "# bytes lost to arena map leaves",
    "Total",
    "",
    "@arena reserve",
    "# arenas in reserve",
    "# bytes in arena reserve",
    "# bytes arena reserve limit",
    "",
    "@arena descriptors",
    "# bytes in arena descriptors",
};

::testing::AssertionResult ParseReport(const std::string &text, Report *report) {
    if (text.empty() || text.back() != '\n') {
        return ::testing::AssertionFailure() << "report does not end with a newline";
    }
    std::vector<std::string> lines = SplitLines(text);
    size_t i = 0;
    auto expect_line = [&](const std::string &want) -> ::testing::AssertionResult {
        if (i >= lines.size()) return ::testing::AssertionFailure() << "missing line: " << want;
        if (lines[i] != want) {
            return ::testing::AssertionFailure()
                   << "line " << i + 1 << ": '" << lines[i] << "', expected '" << want << "'";
        }
        i++;
        return ::testing::AssertionSuccess();
    };
    for (const char *want : {"Small block threshold = 512, in 32 size classes.", "",
                             "class   size   num pools   blocks in use  avail blocks",
                             "-----   ----   ---------   -------------  ------------"}) {
        auto r = expect_line(want);
        if (!r) return r;
    }
    int previous_class = -1;
    for (; i < lines.size() && !lines[i].empty(); i++) {
        ClassRow row;
        unsigned size_class = 0, size = 0;
        if (sscanf(lines[i].c_str(), "%u %u %zu %zu %zu", &size_class, &size, &row.pools,
                   &row.in_use, &row.avail) != 5) {
            return ::testing::AssertionFailure() << "bad class row: " << lines[i];
        }
        char again[128];
        snprintf(again, sizeof again, "%5u %6u %11zu %15zu %13zu", size_class, size, row.pools,
                 row.in_use, row.avail);
        if (lines[i] != again) {
            return ::testing::AssertionFailure()
                   << "class row '" << lines[i] << "' not in CPython's widths: '" << again << "'";
        }
        if (static_cast<int>(size_class) <= previous_class || size_class >= 32 ||
            size != (size_class + 1) * 16 || row.pools == 0) {
            return ::testing::AssertionFailure()
                   << "class row out of order or empty: " << lines[i];
        }
        previous_class = static_cast<int>(size_class);
        row.size_class = size_class;
        row.size = size;
        report->rows[size_class] = row;
    }
    auto r = expect_line("");
    if (!r) return r;

    static const std::regex arenas_label("([0-9]+) arenas \\* ([0-9]+) bytes/arena");
    static const std::regex pools_label("([0-9]+) unused pools \\* ([0-9]+) bytes");
    std::map<std::string, size_t> *section = &report->pool_section;
    for (const std::string &want : kLayout) {
        if (want.empty()) {
            r = expect_line("");
            if (!r) return r;
            continue;
        }
        if (want[0] == '@') {
            r = expect_line(want.substr(1));
            if (!r) return r;
            section = want == "@arena map counts"   ? &report->map_section
                      : want == "@arena reserve" ? &report->reserve_section
                                                 : &report->descriptor_section;
            continue;
        }
        if (i >= lines.size()) return ::testing::AssertionFailure() << "missing line: " << want;
        ValueLine v;
        r = ParseValueLine(lines[i], &v);
        if (!r) return r << " (line " << i + 1 << ")";
        std::smatch m;
        if (want == "N arenas * M bytes/arena" && std::regex_match(v.label, m, arenas_label)) {
            report->arenas_in_label = std::stoull(m[1]);
            report->arena_size_in_label = std::stoull(m[2]);
        } else if (want == "N unused pools * M bytes" &&
                   std::regex_match(v.label, m, pools_label)) {
            report->unused_pools_in_label = std::stoull(m[1]);
            report->pool_size_in_label = std::stoull(m[2]);
        } else if (v.label != want) {
            return ::testing::AssertionFailure()
                   << "line " << i + 1 << ": label '" << v.label << "', expected '" << want << "'";
        }
        (*section)[want] = v.value;
        i++;
    }
    if (i != lines.size()) {
        return ::testing::AssertionFailure() << "unexpected line after the report: " << lines[i];
    }
    return ::testing::AssertionSuccess();
}

Report CurrentReport() PM_GIL_REQUIRED {
    Report report;
    std::string text = PrintStats();
    EXPECT_TRUE(ParseReport(text, &report)) << text;
    return report;
}

ClassRow RowOf(const Report &report, unsigned size_class) {
    auto it = report.rows.find(size_class);
    if (it != report.rows.end()) return it->second;
    ClassRow empty;
    empty.size_class = size_class;
    empty.size = pm_class_block_size(size_class);
    return empty;
}

// Every identity the numbers must satisfy, whatever the heap holds.
void ExpectReportCloses(const Report &r) PM_GIL_REQUIRED {
    const auto &p = r.pool_section;
    size_t arenas = p.at("# arenas allocated current");
    EXPECT_EQ(r.arenas_in_label, arenas);
    EXPECT_EQ(r.arena_size_in_label, PM_ARENA_SIZE);
    EXPECT_EQ(p.at("N arenas * M bytes/arena"), arenas * PM_ARENA_SIZE);
    EXPECT_EQ(arenas, pm_counters.arenas_current);
    EXPECT_EQ(p.at("# arenas allocated total") - p.at("# arenas reclaimed"), arenas);
    EXPECT_GE(p.at("# arenas highwater mark"), arenas);

    // Total is the sum of the lines above it, and equals the arenas' bytes.
    size_t sum = p.at("# bytes in allocated blocks") + p.at("# bytes in available blocks") +
                 p.at("N unused pools * M bytes") + p.at("# bytes lost to pool headers") +
                 p.at("# bytes lost to quantization") + p.at("# bytes lost to arena alignment");
    EXPECT_EQ(p.at("Total"), sum);
    EXPECT_EQ(p.at("Total"), arenas * PM_ARENA_SIZE);
    EXPECT_EQ(r.pool_size_in_label, PM_POOL_SIZE);
    EXPECT_EQ(p.at("N unused pools * M bytes"), r.unused_pools_in_label * PM_POOL_SIZE);

    // The byte lines agree with the class table.
    size_t allocated = 0, available = 0, pools = 0, quantization = 0;
    for (const auto &entry : r.rows) {
        const ClassRow &row = entry.second;
        size_t capacity = pm_class_capacity(row.size_class);
        EXPECT_EQ(row.in_use + row.avail, row.pools * capacity) << "class " << row.size_class;
        allocated += row.in_use * row.size;
        available += row.avail * row.size;
        pools += row.pools;
        quantization += row.pools * (PM_POOL_SIZE % row.size);
    }
    EXPECT_EQ(p.at("# bytes in allocated blocks"), allocated);
    EXPECT_EQ(p.at("# bytes in available blocks"), available);
    EXPECT_LE(pools, arenas * PM_POOLS_PER_ARENA);
    // Pool headers live in the arena descriptors, not in the arenas' bytes.
    EXPECT_EQ(p.at("# bytes lost to pool headers"), 0u);
    EXPECT_GE(r.descriptor_section.at("# bytes in arena descriptors"), arenas * sizeof(pm_arena));
    EXPECT_EQ(p.at("# bytes lost to quantization"), quantization);
    EXPECT_EQ(p.at("# bytes lost to arena alignment") % PM_POOL_SIZE, 0u);
    EXPECT_LE(p.at("# bytes lost to arena alignment"), arenas * PM_POOL_SIZE);

    const auto &m = r.map_section;
    EXPECT_EQ(m.at("# arena map leaf nodes"), pm_counters.map_leaf_nodes);
    EXPECT_EQ(m.at("# bytes lost to arena map root"), sizeof(pm_arena_map.leaf_offset));
    EXPECT_EQ(m.at("# bytes lost to arena map leaves"),
              m.at("# arena map leaf nodes") * sizeof(pm_map_leaf));
    EXPECT_EQ(m.at("Total"),
              m.at("# bytes lost to arena map root") + m.at("# bytes lost to arena map leaves"));

    const auto &s = r.reserve_section;
    EXPECT_EQ(s.at("# arenas in reserve"), pm_arena_reserve_count());
    EXPECT_LE(s.at("# arenas in reserve"), arenas);
    EXPECT_EQ(s.at("# bytes in arena reserve"), s.at("# arenas in reserve") * PM_ARENA_SIZE);
    EXPECT_EQ(s.at("# bytes arena reserve limit"), pm_get_arena_reserve());
}

// ---- a tiny JSON reader (objects, arrays, strings without escapes, numbers, literals) ----

struct Json {
    enum Kind { kNull, kBool, kNumber, kString, kArray, kObject } kind = kNull;
    bool boolean = false;
    uint64_t number = 0;
    bool integer = true;
    std::string string;
    std::vector<Json> array;
    std::vector<std::pair<std::string, Json>> object;

    const Json *Find(const std::string &key) const {
        for (const auto &member : object) {
            if (member.first == key) return &member.second;
        }
        return nullptr;
    }
    uint64_t At(const std::string &key) const {
        const Json *j = Find(key);
        EXPECT_NE(j, nullptr) << "no member " << key;
        if (j == nullptr) return ~uint64_t{0};
        EXPECT_EQ(j->kind, kNumber) << key;
        return j->number;
    }
    const Json &Member(const std::string &key) const {
        static const Json missing;
        const Json *j = Find(key);
        EXPECT_NE(j, nullptr) << "no member " << key;
        return j != nullptr ? *j : missing;
    }
};

class JsonReader {
  public:
    explicit JsonReader(const std::string &text) : s_(text) {}

    // The whole text must be one value, with nothing after it but white space.
    bool Parse(Json *out) {
        if (!Value(out, 0)) return false;
        Space();
        return pos_ == s_.size();
    }
    size_t pos() const { return pos_; }

  private:
    void Space() {
        while (pos_ < s_.size() && isspace(static_cast<unsigned char>(s_[pos_]))) pos_++;
    }
    bool Take(char ch) {
        Space();
        if (pos_ < s_.size() && s_[pos_] == ch) {
            pos_++;
            return true;
        }
        return false;
    }
    bool Literal(const char *word) {
        size_t n = strlen(word);
        if (s_.compare(pos_, n, word) != 0) return false;
        pos_ += n;
        return true;
    }
    bool String(std::string *out) {
        if (!Take('"')) return false;
        while (pos_ < s_.size() && s_[pos_] != '"') {
            unsigned char ch = static_cast<unsigned char>(s_[pos_]);
            if (ch < 0x20 || ch == '\\') return false;  // we never emit escapes
            out->push_back(static_cast<char>(ch));
            pos_++;
        }
        return Take('"');
    }
    bool Number(Json *out) {
        size_t start = pos_;
        if (pos_ < s_.size() && s_[pos_] == '-') pos_++;
        if (pos_ >= s_.size() || !isdigit(static_cast<unsigned char>(s_[pos_]))) return false;
        if (s_[pos_] == '0' && pos_ + 1 < s_.size() &&
            isdigit(static_cast<unsigned char>(s_[pos_ + 1]))) {
            return false;  // no leading zeros in JSON
        }
        while (pos_ < s_.size() && isdigit(static_cast<unsigned char>(s_[pos_]))) pos_++;
        while (pos_ < s_.size() && strchr(".eE+-", s_[pos_]) != nullptr) {
            out->integer = false;
            pos_++;
            while (pos_ < s_.size() && isdigit(static_cast<unsigned char>(s_[pos_]))) pos_++;
        }
        out->kind = Json::kNumber;
        std::string token = s_.substr(start, pos_ - start);
        if (token[0] == '-') out->integer = false;
        if (out->integer) out->number = std::stoull(token);
        return true;
    }
    bool Value(Json *out, int depth) {
        if (depth > 16) return false;
        Space();
        if (pos_ >= s_.size()) return false;
        char ch = s_[pos_];
        if (ch == '{') {
            pos_++;
            out->kind = Json::kObject;
            if (Take('}')) return true;
            do {
                std::pair<std::string, Json> member;
                if (!String(&member.first) || !Take(':') || !Value(&member.second, depth + 1)) {
                    return false;
                }
                if (out->Find(member.first) != nullptr) return false;  // duplicate key
                out->object.push_back(std::move(member));
            } while (Take(','));
            return Take('}');
        }
        if (ch == '[') {
            pos_++;
            out->kind = Json::kArray;
            if (Take(']')) return true;
            do {
                out->array.emplace_back();
                if (!Value(&out->array.back(), depth + 1)) return false;
            } while (Take(','));
            return Take(']');
        }
        if (ch == '"') {
            out->kind = Json::kString;
            return String(&out->string);
        }
        if (Literal("true")) {
            out->kind = Json::kBool;
            out->boolean = true;
            return true;
        }
        if (Literal("false")) {
            out->kind = Json::kBool;
            return true;
        }
        if (Literal("null")) return true;
        return Number(out);
    }

    const std::string &s_;
    size_t pos_ = 0;
};

std::string StatsJson() PM_GIL_REQUIRED {
    size_t n = pm_stats_json(nullptr, 0);
    EXPECT_GT(n, 0u);
    std::string text(n + 1, '\0');
    EXPECT_EQ(pm_stats_json(&text[0], text.size()), n);
    EXPECT_EQ(strlen(text.c_str()), n);
    text.resize(n);
    return text;
}

// ---- fixture --------------------------------------------------------------------------

class StatsTest : public ::testing::Test {
  protected:
    void SetUp() override {
        GilScope gil;
        saved_reserve_ = pm_get_arena_reserve();
        blocks_at_start_ = pm_allocated_blocks();
    }
    void TearDown() override {
        GilScope gil;
        for (void *p : blocks_) pm_obj_free(p);
        blocks_.clear();
        pm_set_arena_reserve(saved_reserve_);
        EXPECT_EQ(pm_heap_check(), nullptr);
        EXPECT_EQ(pm_allocated_blocks(), blocks_at_start_) << "a test leaked blocks";
    }
    void *Alloc(size_t n) PM_GIL_REQUIRED {
        void *p = pm_obj_malloc(n);
        EXPECT_NE(p, nullptr) << n;
        if (p != nullptr) blocks_.push_back(p);
        return p;
    }
    // A mixed workload over several arenas: every class, some raw-fallback blocks, and holes.
    void MixedWorkload(size_t count) PM_GIL_REQUIRED {
        std::mt19937 rng(12345);
        std::uniform_int_distribution<size_t> size(0, 600);
        for (size_t i = 0; i < count; i++) Alloc(size(rng));
        for (size_t i = 0; i < blocks_.size(); i += 3) {
            pm_obj_free(blocks_[i]);
            blocks_[i] = nullptr;
        }
        std::vector<void *> kept;
        for (void *p : blocks_) {
            if (p != nullptr) kept.push_back(p);
        }
        blocks_.swap(kept);
    }

    std::vector<void *> blocks_;
    size_t saved_reserve_ = 0;
    size_t blocks_at_start_ = 0;
};

// ---- layout ---------------------------------------------------------------------------

TEST_F(StatsTest, LayoutIsCPythonsLineForLine) {
    GilScope gil;
    Report report = CurrentReport();
    ExpectReportCloses(report);
}

TEST_F(StatsTest, LayoutHoldsOverSeveralArenas) {
    GilScope gil;
    MixedWorkload(6000);  // ~1.5 MiB of blocks: several 256 KiB arenas
    Report report = CurrentReport();
    ExpectReportCloses(report);
    EXPECT_GE(report.pool_section.at("# arenas allocated current"), 2u);
    EXPECT_GE(report.rows.size(), 30u) << "a mixed workload touches almost every class";
    EXPECT_EQ(pm_heap_check(), nullptr);
}

TEST_F(StatsTest, ValueLinesUseThousandsSeparators) {
    GilScope gil;
    MixedWorkload(6000);
    std::string text = PrintStats();
    // Byte totals of a few arenas are in the millions: "1,048,576"-style values appear.
    EXPECT_TRUE(std::regex_search(text, std::regex("= +[0-9]{1,3},[0-9]{3},[0-9]{3}\n"))) << text;
    // And no label line is misaligned: every line with '=' has it at column 35, except the
    // header line.
    for (const std::string &line : SplitLines(text)) {
        if (line.find('=') == std::string::npos || line.rfind("Small block", 0) == 0) continue;
        EXPECT_EQ(line.find('='), 35u) << line;
        EXPECT_EQ(line.size(), 57u) << line;
    }
}

// ---- the numbers follow the allocations ------------------------------------------------

TEST_F(StatsTest, ClassRowCountsWhatWasAllocated) {
    GilScope gil;
    constexpr unsigned kClass = 3;  // 64-byte blocks
    constexpr size_t kBlocks = 1000;
    const size_t capacity = pm_class_capacity(kClass);
    ClassRow before = RowOf(CurrentReport(), kClass);
    size_t blocks_before = pm_allocated_blocks();

    for (size_t i = 0; i < kBlocks; i++) Alloc(64);
    ClassRow after = RowOf(CurrentReport(), kClass);
    EXPECT_EQ(after.size, 64u);
    EXPECT_EQ(after.in_use - before.in_use, kBlocks);
    EXPECT_EQ(after.avail, after.pools * capacity - after.in_use);
    EXPECT_GE(after.pools, (after.in_use + capacity - 1) / capacity);
    EXPECT_LE(after.pools, before.pools + (kBlocks + capacity - 1) / capacity + 1);
    EXPECT_EQ(pm_allocated_blocks(), blocks_before + kBlocks);

    for (void *p : blocks_) pm_obj_free(p);
    blocks_.clear();
    ClassRow freed = RowOf(CurrentReport(), kClass);
    EXPECT_EQ(freed.in_use, before.in_use);
    EXPECT_EQ(pm_allocated_blocks(), blocks_before);
}

TEST_F(StatsTest, AllocatedBlocksCountsPoolAndRawBlocks) {
    GilScope gil;
    size_t start = pm_allocated_blocks();
    size_t raw_start = pm_counters.raw_allocated_blocks;
    void *small = Alloc(100);
    void *zero = Alloc(0);      // 0 bytes: passed to the raw domain
    void *large = Alloc(4096);  // above 512: raw domain
    ASSERT_TRUE(small && zero && large);
    EXPECT_EQ(pm_allocated_blocks(), start + 3);
    EXPECT_EQ(pm_counters.raw_allocated_blocks, raw_start + 2);
    void *mem = pm_mem_malloc(200);  // the mem domain shares pymalloc
    ASSERT_NE(mem, nullptr);
    EXPECT_EQ(pm_allocated_blocks(), start + 4);
    pm_mem_free(mem);
    for (void *p : blocks_) pm_obj_free(p);
    blocks_.clear();
    EXPECT_EQ(pm_allocated_blocks(), start);
    EXPECT_EQ(pm_counters.raw_allocated_blocks, raw_start);
}

TEST_F(StatsTest, ReserveArenasAreCountedAndReported) {
    GilScope gil;
    pm_set_arena_reserve(4 * PM_ARENA_SIZE);
    // Enough 512-byte blocks to fill more than one arena, then free them all: the arenas that
    // empty go to the reserve (up to its limit).
    size_t per_arena = PM_POOLS_PER_ARENA * pm_class_capacity(31);
    for (size_t i = 0; i < 3 * per_arena; i++) Alloc(512);
    for (void *p : blocks_) pm_obj_free(p);
    blocks_.clear();
    Report report = CurrentReport();
    ExpectReportCloses(report);
    EXPECT_GE(report.reserve_section.at("# arenas in reserve"), 1u);
    EXPECT_EQ(report.reserve_section.at("# bytes arena reserve limit"), 4 * PM_ARENA_SIZE);
    EXPECT_EQ(pm_heap_check(), nullptr);

    pm_set_arena_reserve(0);
    report = CurrentReport();
    ExpectReportCloses(report);
    EXPECT_EQ(report.reserve_section.at("# arenas in reserve"), 0u);
    EXPECT_GE(report.pool_section.at("# arenas reclaimed"), 1u);
}

// ---- JSON -----------------------------------------------------------------------------

TEST_F(StatsTest, JsonParsesAndAgreesWithTheReport) {
    GilScope gil;
    MixedWorkload(3000);
    std::string text = StatsJson();
    Report report = CurrentReport();  // nothing allocates from pymalloc in between
    Json root;
    JsonReader reader(text);
    ASSERT_TRUE(reader.Parse(&root)) << "JSON error near offset " << reader.pos() << ": " << text;
    ASSERT_EQ(root.kind, Json::kObject);

    EXPECT_EQ(root.At("small_block_threshold"), 512u);
    EXPECT_EQ(root.At("size_classes"), 32u);
    EXPECT_EQ(root.At("arena_size"), PM_ARENA_SIZE);
    EXPECT_EQ(root.At("pool_size"), PM_POOL_SIZE);
    EXPECT_EQ(root.At("pool_header_size"), sizeof(pm_pool));
    EXPECT_EQ(root.At("descriptor_bytes"), report.descriptor_section.at("# bytes in arena descriptors"));

    const Json &classes = root.Member("classes");
    ASSERT_EQ(classes.kind, Json::kArray);
    ASSERT_EQ(classes.array.size(), 32u);
    for (unsigned c = 0; c < 32; c++) {
        const Json &entry = classes.array[c];
        ClassRow row = RowOf(report, c);
        EXPECT_EQ(entry.At("class"), c);
        EXPECT_EQ(entry.At("size"), (c + 1) * 16u);
        EXPECT_EQ(entry.At("capacity"), pm_class_capacity(c));
        EXPECT_EQ(entry.At("pools"), row.pools) << c;
        EXPECT_EQ(entry.At("blocks_in_use"), row.in_use) << c;
        EXPECT_EQ(entry.At("avail_blocks"), row.avail) << c;
    }

    const auto &p = report.pool_section;
    const Json &arenas = root.Member("arenas");
    EXPECT_EQ(arenas.At("allocated_total"), p.at("# arenas allocated total"));
    EXPECT_EQ(arenas.At("reclaimed"), p.at("# arenas reclaimed"));
    EXPECT_EQ(arenas.At("highwater"), p.at("# arenas highwater mark"));
    EXPECT_EQ(arenas.At("current"), p.at("# arenas allocated current"));
    EXPECT_EQ(arenas.At("bytes"), p.at("N arenas * M bytes/arena"));

    const Json &bytes = root.Member("bytes");
    EXPECT_EQ(bytes.At("allocated_blocks"), p.at("# bytes in allocated blocks"));
    EXPECT_EQ(bytes.At("available_blocks"), p.at("# bytes in available blocks"));
    EXPECT_EQ(bytes.At("unused_pools"), report.unused_pools_in_label);
    EXPECT_EQ(bytes.At("unused_pool_bytes"), p.at("N unused pools * M bytes"));
    EXPECT_EQ(bytes.At("pool_headers"), p.at("# bytes lost to pool headers"));
    EXPECT_EQ(bytes.At("quantization"), p.at("# bytes lost to quantization"));
    EXPECT_EQ(bytes.At("arena_alignment"), p.at("# bytes lost to arena alignment"));
    EXPECT_EQ(bytes.At("total"), p.at("Total"));
    EXPECT_EQ(bytes.At("total"), arenas.At("current") * PM_ARENA_SIZE);

    const Json &map = root.Member("arena_map");
    EXPECT_EQ(map.At("leaf_nodes"), report.map_section.at("# arena map leaf nodes"));
    EXPECT_EQ(map.At("root_bytes"), report.map_section.at("# bytes lost to arena map root"));
    EXPECT_EQ(map.At("leaf_bytes"), report.map_section.at("# bytes lost to arena map leaves"));
    EXPECT_EQ(map.At("total"), report.map_section.at("Total"));

    EXPECT_EQ(root.At("allocated_blocks"), pm_allocated_blocks());
    EXPECT_EQ(root.At("raw_allocated_blocks"), pm_counters.raw_allocated_blocks);
    const Json &reserve = root.Member("reserve");
    EXPECT_EQ(reserve.At("arenas"), report.reserve_section.at("# arenas in reserve"));
    EXPECT_EQ(reserve.At("bytes"), report.reserve_section.at("# bytes in arena reserve"));
    EXPECT_EQ(reserve.At("limit_bytes"), report.reserve_section.at("# bytes arena reserve limit"));
}

TEST_F(StatsTest, JsonHasSnprintfSemantics) {
    GilScope gil;
    MixedWorkload(500);
    std::string full = StatsJson();
    const size_t n = full.size();
    ASSERT_GT(n, 100u);

    // NULL with size 0 measures; NULL with a size is an error.
    EXPECT_EQ(pm_stats_json(nullptr, 0), n);
    EXPECT_EQ(pm_stats_json(nullptr, 10), 0u);

    // Every truncation point: the return value is still the full length, exactly size - 1
    // bytes of the text are written plus a NUL, and nothing past size is touched.
    const char kCanary = '\x5a';
    for (size_t size : {size_t{1}, size_t{2}, size_t{17}, n / 2, n - 1, n, n + 1, n + 100}) {
        std::vector<char> buf(size + 16, kCanary);
        ASSERT_EQ(pm_stats_json(buf.data(), size), n) << size;
        size_t written = std::min(size - 1, n);
        EXPECT_EQ(std::string(buf.data(), written), full.substr(0, written)) << size;
        EXPECT_EQ(buf[written], '\0') << size;
        for (size_t i = written + 1; i < size; i++) {
            // snprintf leaves bytes after the NUL alone; we promise no more than that.
            if (buf[i] != kCanary) {
                ADD_FAILURE() << "byte " << i << " after the NUL written, size " << size;
                break;
            }
        }
        for (size_t i = size; i < buf.size(); i++) {
            ASSERT_EQ(buf[i], kCanary) << "byte " << i << " beyond size " << size << " written";
        }
    }

    // Size 0 with a real buffer writes nothing at all.
    char untouched = kCanary;
    EXPECT_EQ(pm_stats_json(&untouched, 0), n);
    EXPECT_EQ(untouched, kCanary);
}

// ---- PYTHONMALLOCSTATS: a report before each new arena ---------------------------------

TEST_F(StatsTest, PrintsBeforeEachNewArenaWhenAsked) {
    GilScope gil;
    pm_set_arena_reserve(0);  // no reserve arena may stand in for a new one
    size_t total_before = pm_counters.arenas_allocated_total;

    ::testing::internal::CaptureStderr();
    pm_stats_on_new_arena = 1;
    for (size_t i = 0; i < 100000 && pm_counters.arenas_allocated_total < total_before + 2; i++) {
        Alloc(512);
    }
    pm_stats_on_new_arena = 0;
    std::string printed = ::testing::internal::GetCapturedStderr();
    ASSERT_EQ(pm_counters.arenas_allocated_total, total_before + 2);

    // Two reports, each printed just before its arena was created.
    std::vector<size_t> starts;
    for (size_t at = printed.find("Small block threshold"); at != std::string::npos;
         at = printed.find("Small block threshold", at + 1)) {
        starts.push_back(at);
    }
    ASSERT_EQ(starts.size(), 2u) << printed;
    for (size_t k = 0; k < 2; k++) {
        size_t end = k + 1 < starts.size() ? starts[k + 1] : printed.size();
        Report report;
        ASSERT_TRUE(ParseReport(printed.substr(starts[k], end - starts[k]), &report));
        EXPECT_EQ(report.pool_section.at("# arenas allocated total"), total_before + k);
        EXPECT_EQ(report.pool_section.at("Total"),
                  report.pool_section.at("# arenas allocated current") * PM_ARENA_SIZE);
    }

    // Off again: more arenas, no output.
    ::testing::internal::CaptureStderr();
    for (size_t i = 0; i < 100000 && pm_counters.arenas_allocated_total < total_before + 3; i++) {
        Alloc(512);
    }
    EXPECT_EQ(::testing::internal::GetCapturedStderr(), "");
}

TEST(StatsExactLineTest, ArenaMapRootLine) {
    GilScope gil;
    // One line checked byte for byte against an independent rendering.
    std::string text = PrintStats();
    char want[64];
    size_t root = sizeof(pm_arena_map.leaf_offset);
    std::string digits = std::to_string(root), grouped;
    for (size_t i = 0; i < digits.size(); i++) {
        if (i > 0 && (digits.size() - i) % 3 == 0) grouped += ',';
        grouped += digits[i];
    }
    snprintf(want, sizeof want, "%-35s=%21s\n", "# bytes lost to arena map root", grouped.c_str());
    EXPECT_NE(text.find(want), std::string::npos) << want << text;
}

}  // namespace
