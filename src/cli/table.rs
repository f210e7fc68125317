//! Plain tables for the CLI (comfy-table): columns sized by display width, so CJK customer
//! ids and emoji line up, no borders, and no spaces at the ends of lines (pipes to `diff`
//! and `grep` stay clean).

use comfy_table::{presets::NOTHING, CellAlignment, ContentArrangement, Table};

/// A table with these headers; `right` lists the columns (by index) aligned right.
pub struct PlainTable {
    table: Table,
}

impl PlainTable {
    pub fn new(headers: &[&str], right: &[usize]) -> PlainTable {
        let mut table = Table::new();
        table
            .load_style(NOTHING)
            .set_content_arrangement(ContentArrangement::Disabled)
            .set_header(headers.to_vec());
        for &c in right {
            if let Some(column) = table.column_mut(c) {
                column.set_cell_alignment(CellAlignment::Right);
            }
        }
        PlainTable { table }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        // A control character (a newline in a value) would break the row's line.
        let cells: Vec<String> = cells
            .into_iter()
            .map(|c| {
                c.chars()
                    .map(|ch| if ch.is_control() { ' ' } else { ch })
                    .collect()
            })
            .collect();
        self.table.add_row(cells);
    }

    /// The table's lines, without the padding comfy-table puts around the outer columns.
    pub fn lines(&self) -> Vec<String> {
        let rendered = self.table.to_string();
        let lines: Vec<&str> = rendered.lines().collect();
        // NOTHING still pads every cell by one space on each side: drop the leading one.
        lines
            .iter()
            .map(|l| l.strip_prefix(' ').unwrap_or(l).trim_end().to_string())
            .collect()
    }

    pub fn print(&self) {
        for line in self.lines() {
            println!("{line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wide_characters_keep_columns_aligned_and_lines_end_without_spaces() {
        let mut t = PlainTable::new(&["ID", "CUSTOMER", "TOTAL"], &[2]);
        t.row(vec!["1".into(), "alice".into(), "12.50".into()]);
        t.row(vec!["2".into(), "田中商店".into(), "3.00".into()]);
        t.row(vec!["3".into(), "a\nb".into(), "100.00".into()]);
        let lines = t.lines();
        assert_eq!(lines.len(), 4, "{lines:?}");
        for l in &lines {
            assert_eq!(l.trim_end(), l, "trailing space in {l:?}");
        }
        // The TOTAL column ends at the same display column on every line.
        use unicode_width::UnicodeWidthStr;
        let widths: Vec<usize> = lines.iter().map(|l| l.width()).collect();
        assert!(widths.iter().all(|w| *w == widths[0]), "{lines:#?}");
        assert!(lines[2].contains("田中商店"));
        assert!(lines[3].contains("a b"));
    }
}
