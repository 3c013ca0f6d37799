import React, { ReactNode } from "react";

// Plain CSS in a <style> tag: no CSS toolchain needed, and it is in the server-rendered HTML.
const STYLES = `
  * { box-sizing: border-box; }
  body { margin: 0; font-family: system-ui, -apple-system, "Segoe UI", sans-serif; background: #f4f5f7; color: #1d2433; }
  main { max-width: 40rem; margin: 3rem auto; padding: 0 1rem; }
  header a { color: inherit; text-decoration: none; }
  h1 { font-size: 1.8rem; margin: 0 0 0.25rem; }
  .subtitle { color: #5b6478; margin: 0 0 1.5rem; }
  .card { background: white; border-radius: 0.6rem; box-shadow: 0 1px 3px rgba(0,0,0,0.12); padding: 1.25rem; }
  form { display: flex; gap: 0.5rem; }
  input[type=text] { flex: 1; font-size: 1rem; padding: 0.55rem 0.7rem; border: 1px solid #c5cad6; border-radius: 0.4rem; }
  button { font-size: 0.95rem; padding: 0.5rem 0.9rem; border: 0; border-radius: 0.4rem; background: #2f6fed; color: white; cursor: pointer; }
  button.secondary { background: #e7e9ef; color: #1d2433; }
  button.danger { background: transparent; color: #c0392b; }
  button:disabled { opacity: 0.6; cursor: default; }
  .error { background: #fdecea; color: #a12a1d; border-radius: 0.4rem; padding: 0.6rem 0.8rem; margin: 0.75rem 0 0; }
  ul { list-style: none; padding: 0; margin: 1rem 0 0; }
  li { display: flex; align-items: center; gap: 0.6rem; padding: 0.55rem 0; border-top: 1px solid #eceef3; }
  li a { flex: 1; color: inherit; text-decoration: none; overflow-wrap: anywhere; }
  li.done a, h2.done { text-decoration: line-through; color: #8a91a3; }
  .empty { color: #8a91a3; margin: 1rem 0 0; }
  .meta { color: #5b6478; font-size: 0.9rem; }
`;

const Layout = ({ children }: { children: ReactNode }) => (
  <>
    <style>{STYLES}</style>
    <main>
      <header>
        <h1>
          <a href="/">Todos</a>
        </h1>
        <p className="subtitle">A Mountaineer app on mountaineer_db and PostgreSQL.</p>
      </header>
      {children}
    </main>
  </>
);

export default Layout;
