"""Inline CSS for report.html (kept in Python so it ships without package-data settings).

The page must open from disk with no network: system font stack, no web fonts, no CDN.
Colours match ``plots.py``.
"""

CSS = """
:root {
  --ink: #1f2937; --muted: #6b7280; --line: #e5e7eb; --bg: #f5f6fa; --card: #ffffff;
  --accent: #4f46e5; --teal: #0d9488; --amber: #d97706; --rose: #e11d48; --green: #059669;
}
* { box-sizing: border-box; }
html { -webkit-text-size-adjust: 100%; }
body {
  margin: 0; background: var(--bg); color: var(--ink);
  font: 15px/1.55 -apple-system, BlinkMacSystemFont, "Segoe UI", Roboto, "Helvetica Neue",
        "Noto Sans", "DejaVu Sans", Arial, sans-serif;
}
code, pre, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, "DejaVu Sans Mono", monospace; }
a { color: var(--accent); }
header.hero {
  background: linear-gradient(120deg, #1e1b4b 0%, #3730a3 55%, #4f46e5 100%);
  color: #fff; padding: 34px 0 30px;
}
.wrap { max-width: 1180px; margin: 0 auto; padding: 0 28px; }
.hero .wrap { display: flex; justify-content: space-between; align-items: flex-end; gap: 24px; flex-wrap: wrap; }
.eyebrow { text-transform: uppercase; letter-spacing: .12em; font-size: 11.5px; opacity: .75; font-weight: 600; }
.hero h1 { margin: 6px 0 8px; font-size: 30px; line-height: 1.2; font-weight: 700; word-break: break-all; }
.hero .meta { font-size: 13.5px; opacity: .85; }
.hero .meta span + span::before { content: "\\00b7"; margin: 0 8px; opacity: .6; }
.headline { text-align: right; }
.headline .big { font-size: 52px; font-weight: 750; line-height: 1; letter-spacing: -.02em; }
.headline .lbl { font-size: 13px; opacity: .8; margin-top: 6px; }
.pill {
  display: inline-block; vertical-align: middle; font-size: 12px; font-weight: 700;
  text-transform: uppercase; letter-spacing: .06em; padding: 3px 10px; border-radius: 999px;
  margin-left: 10px; background: rgba(255,255,255,.16); color: #fff; border: 1px solid rgba(255,255,255,.35);
}
.pill.done { background: #10b981; border-color: #10b981; }
.pill.running { background: #3b82f6; border-color: #3b82f6; }
.pill.failed { background: #e11d48; border-color: #e11d48; }
.pill.stopped_early { background: #f59e0b; border-color: #f59e0b; }
nav.toc { background: #fff; border-bottom: 1px solid var(--line); position: sticky; top: 0; z-index: 5; }
nav.toc .wrap { display: flex; gap: 22px; overflow-x: auto; }
nav.toc a { color: var(--muted); text-decoration: none; font-size: 13.5px; font-weight: 600; padding: 11px 0; white-space: nowrap; }
nav.toc a:hover { color: var(--accent); }
main { padding: 26px 0 40px; }
.kpis { display: grid; grid-template-columns: repeat(auto-fit, minmax(140px, 1fr)); gap: 14px; margin-bottom: 22px; }
.kpi { background: var(--card); border: 1px solid var(--line); border-radius: 12px; padding: 14px 16px; }
.kpi .v { font-size: 24px; font-weight: 700; letter-spacing: -.01em; }
.kpi .k { font-size: 12px; color: var(--muted); text-transform: uppercase; letter-spacing: .06em; font-weight: 600; }
.kpi .s { font-size: 12px; color: var(--muted); }
section.card {
  background: var(--card); border: 1px solid var(--line); border-radius: 14px;
  padding: 22px 24px 24px; margin-bottom: 22px; box-shadow: 0 1px 2px rgba(16,24,40,.04);
}
section.card > h2 { margin: 0 0 4px; font-size: 19px; }
section.card > p.sub { margin: 0 0 16px; color: var(--muted); font-size: 13.5px; }
h3 { font-size: 14px; margin: 18px 0 8px; color: var(--ink); }
.grid2 { display: grid; grid-template-columns: repeat(auto-fit, minmax(460px, 1fr)); gap: 18px; }
.grid2 > * { min-width: 0; }
figure { margin: 0; }
figure img { max-width: 100%; height: auto; display: block; margin: 0 auto; }
.center { text-align: center; }
table { border-collapse: collapse; width: 100%; font-size: 13.5px; }
th, td { text-align: left; padding: 7px 10px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { color: var(--muted); font-weight: 600; font-size: 12px; text-transform: uppercase; letter-spacing: .05em; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.ours td { background: #eef2ff; font-weight: 700; color: var(--accent); }
table.kv td:first-child { color: var(--muted); width: 38%; }
table.kv td { word-break: break-word; }
.bar { display: inline-block; width: 90px; height: 7px; background: #eef0f4; border-radius: 4px; margin-left: 8px; vertical-align: middle; overflow: hidden; }
.bar > span { display: block; height: 100%; background: var(--accent); border-radius: 4px; }
.bar.low > span { background: var(--rose); }
.notice { border-radius: 12px; padding: 14px 18px; margin-bottom: 22px; font-size: 14px; }
.notice.warn { background: #fffbeb; border: 1px solid #fcd34d; }
.notice.err { background: #fff1f2; border: 1px solid #fda4af; }
.notice h2 { font-size: 15px; margin: 0 0 6px; }
.notice ul { margin: 4px 0 0; padding-left: 20px; }
.empty { color: var(--muted); background: #f9fafb; border: 1px dashed #d1d5db; border-radius: 10px; padding: 16px 18px; font-size: 14px; }
details { border: 1px solid var(--line); border-radius: 10px; padding: 10px 14px; margin-top: 12px; }
details summary { cursor: pointer; font-weight: 600; font-size: 14px; }
pre { background: #0f172a; color: #e2e8f0; padding: 14px 16px; border-radius: 8px; overflow-x: auto; font-size: 12.5px; line-height: 1.5; }
.files { display: grid; grid-template-columns: repeat(auto-fit, minmax(250px, 1fr)); gap: 6px 18px; font-size: 13.5px; }
.ok { color: var(--green); font-weight: 700; }
.no { color: var(--rose); font-weight: 700; }
.opt { color: var(--muted); font-weight: 700; }
footer { color: var(--muted); font-size: 12.5px; text-align: center; padding: 10px 0 34px; }
@media print { nav.toc { display: none; } section.card { break-inside: avoid; } }
"""
