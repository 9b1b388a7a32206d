/// The fleet page served at `GET /`: one self-contained HTML document (its style and script inline, nothing fetched
/// from elsewhere) that polls `/status.json` every two seconds and redraws in place. Every value goes into the page
/// as text (`textContent`), never as markup: member names and errors come from the fleet's records.
enum FleetPage {
    static let html = """
        <!doctype html>
        <html lang="en">
        <head>
        <meta charset="utf-8">
        <meta name="viewport" content="width=device-width, initial-scale=1">
        <title>dmirr fleet</title>
        <style>
        :root { color-scheme: light dark; --ok: #1a7f37; --warn: #9a6700; --bad: #cf222e; --info: #0969da; --muted: #6e7781; }
        body { font: 15px/1.4 system-ui, sans-serif; margin: 0 auto; padding: 12px; max-width: 1100px; }
        h1 { font-size: 1.3em; margin: 0 0 4px; }
        .summary { display: flex; flex-wrap: wrap; gap: 6px 18px; margin: 8px 0 14px; }
        .summary div { white-space: nowrap; }
        .label { color: var(--muted); font-size: .85em; display: block; }
        table { border-collapse: collapse; width: 100%; }
        th, td { text-align: left; padding: 6px 8px; border-bottom: 1px solid rgba(128,128,128,.25); vertical-align: top; }
        th { font-size: .8em; color: var(--muted); font-weight: 600; }
        code { font-family: ui-monospace, monospace; font-size: .9em; overflow-wrap: anywhere; }
        .state { font-weight: 600; }
        .in_sync { color: var(--ok); } .syncing { color: var(--info); } .waiting, .behind, .suspect { color: var(--warn); }
        .failed, .down { color: var(--bad); }
        .bar { display: inline-block; width: 70px; height: 8px; background: rgba(128,128,128,.25); border-radius: 4px; vertical-align: middle; }
        .bar span { display: block; height: 100%; background: var(--info); border-radius: 4px; }
        .error { color: var(--bad); font-size: .9em; overflow-wrap: anywhere; }
        #banner { display: none; background: var(--bad); color: #fff; padding: 6px 10px; border-radius: 4px; margin-bottom: 10px; }
        #flows li { margin: 2px 0; }
        footer { color: var(--muted); font-size: .8em; margin-top: 14px; }
        /* Phone width: each member becomes a compact card; empty fields are left out. */
        @media (max-width: 640px) {
          thead { display: none; }
          table, tbody { display: block; }
          tr { display: flex; flex-wrap: wrap; align-items: baseline; gap: 2px 12px; border: 1px solid rgba(128,128,128,.3);
               border-radius: 6px; margin-bottom: 8px; padding: 6px 10px; }
          td { display: block; border: none; padding: 0; }
          td.empty { display: none; }
          td::before { content: attr(data-label) " "; color: var(--muted); font-size: .8em; }
          td.pos::before, td.name::before, td.state::before, td.tok::before { content: none; }
          td.pos { color: var(--muted); }
          td.name { font-weight: 600; }
          td.error { flex-basis: 100%; }
        }
        </style>
        </head>
        <body>
        <div id="banner" role="alert"></div>
        <h1>dmirr fleet <span id="fleet"></span></h1>
        <div class="summary">
          <div><span class="label">seen from</span><span id="node">…</span></div>
          <div><span class="label">target token</span><code id="target">…</code></div>
          <div><span class="label">since the push</span><span id="age">…</span></div>
          <div><span class="label">in sync</span><span id="count">…</span></div>
          <div><span class="label">plan</span><span id="plan">…</span></div>
        </div>
        <table>
          <thead><tr><th>#</th><th>member</th><th>state</th><th>token</th><th>lag</th><th>source</th><th>progress</th><th>last sync</th><th>last error</th></tr></thead>
          <tbody id="members"></tbody>
        </table>
        <h2 style="font-size:1em;margin-top:16px">Who serves whom</h2>
        <ul id="flows"></ul>
        <footer>Updated <span id="updated">never</span> from <code>/status.json</code> (the <code>dmirr status --json</code> document).</footer>
        <script>
        "use strict";
        const $ = (id) => document.getElementById(id);
        function ago(iso) {
          if (!iso) return "never";
          let s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
          if (s < 90) return s + " s ago";
          if (s < 5400) return Math.round(s / 60) + " min ago";
          if (s < 172800) return Math.round(s / 3600) + " h ago";
          return Math.round(s / 86400) + " d ago";
        }
        function cell(row, label, text, cls) {
          const td = document.createElement("td");
          td.dataset.label = label;
          if (cls) td.className = cls;
          if (text instanceof Node) td.appendChild(text); else td.textContent = text;
          if (text === "–" || text === "") td.classList.add("empty");
          row.appendChild(td);
          return td;
        }
        function render(doc) {
          $("fleet").textContent = doc.fleet;
          $("node").textContent = doc.node;
          const target = doc.target && doc.target.token;
          $("target").textContent = target || "unknown";
          $("age").textContent = doc.target && doc.target.seen_at ? ago(doc.target.seen_at) : "–";
          const plan = doc.plan || {};
          $("plan").textContent = plan.digest ? (plan.agreed ? "agreed" : "not agreed") + " (" + plan.digest.slice(0, 12) + ")" : "none";
          const members = doc.members || [];
          $("count").textContent = members.filter(m => m.state === "in_sync").length + " of " + members.length;
          const body = $("members");
          const rows = [];
          const flows = [];
          for (const m of members) {
            const tr = document.createElement("tr");
            tr.dataset.node = m.node;
            tr.dataset.state = m.state;
            tr.dataset.token = m.token || "";
            cell(tr, "#", m.position == null ? "–" : String(m.position), "pos");
            cell(tr, "member", m.node, "name");
            cell(tr, "state", m.state.replace("_", " "), "state " + m.state);
            const code = document.createElement("code");
            code.textContent = m.token || "–";
            cell(tr, "token", code, "tok");
            cell(tr, "lag", !m.token ? "–" : (target && m.token === target ? "0" : "behind"));
            cell(tr, "source", m.source || "–");
            if (m.progress == null) {
              cell(tr, "progress", "–");
            } else {
              const bar = document.createElement("span");
              bar.className = "bar";
              const fill = document.createElement("span");
              fill.style.width = Math.round(m.progress * 100) + "%";
              bar.appendChild(fill);
              const wrap = document.createElement("span");
              wrap.appendChild(bar);
              wrap.appendChild(document.createTextNode(" " + Math.round(m.progress * 100) + "%"));
              cell(tr, "progress", wrap);
            }
            cell(tr, "last sync", ago(m.last_sync));
            cell(tr, "last error", m.last_error || "", "error");
            rows.push(tr);
            if (m.state === "syncing" && m.source) flows.push(m.node + " ← " + m.source + (target ? " (" + target + ")" : ""));
          }
          body.replaceChildren(...rows);
          const list = flows.map(text => { const li = document.createElement("li"); li.textContent = text; return li; });
          if (list.length === 0) { const li = document.createElement("li"); li.textContent = "nobody is pulling right now"; list.push(li); }
          $("flows").replaceChildren(...list);
          $("updated").textContent = new Date().toLocaleTimeString();
          document.body.dataset.target = target || "";
        }
        async function refresh() {
          try {
            const response = await fetch("/status.json", { cache: "no-store" });
            if (!response.ok) throw new Error("HTTP " + response.status);
            render(await response.json());
            $("banner").style.display = "none";
          } catch (e) {
            $("banner").textContent = "Cannot reach the agent: " + e.message + " (showing the last answer)";
            $("banner").style.display = "block";
          }
        }
        refresh();
        setInterval(refresh, 2000);
        </script>
        </body>
        </html>
        """
}
