/** @type {import('tailwindcss').Config} */

// Candidate extractor for Rust sources containing maud templates.
//
// maud writes classes as dot-chains (`div.bg-white.rounded-lg.shadow`,
// `span."bg-green-100"`, `p.active[is_active]`, `div.card#main`) as well as
// `class="px-4 py-2"` strings. Tailwind's default extractor misses most of the
// dot-chain forms, so for `.rs` files we:
//   1. tokenize on whitespace, quotes and Rust punctuation ({ } ( ) ; , < > =),
//      ignoring delimiters inside `[...]` so arbitrary values such as
//      `w-[calc(100%-1rem)]` or `bg-[#1d4ed8]` survive intact;
//   2. split every token on `.` (outside brackets, and not between two digits,
//      so `py-0.5` / `w-1.5` stay whole), yielding the dot-chain classes;
//   3. additionally strip maud `#id` suffixes and `[toggle]` suffixes;
//   4. keep only tokens that look like Tailwind classes (letters, digits and
//      `- : / [ ] . # % ! _ & > * + ' ( ) ,`).
// Extra non-class candidates are harmless: Tailwind silently ignores them.
const TOKEN_DELIMS = new Set([' ', '\t', '\n', '\r', '"', "'", '`', '{', '}', '(', ')', ';', ',', '<', '>', '=']);
const CLASS_LIKE = /^!?-?[A-Za-z@\[][A-Za-z0-9_\-:\/\[\]\.#%!&>*+'(),@~]*$/;

function tokenize(content) {
  const out = [];
  let cur = '';
  let depth = 0;
  for (const ch of content) {
    if (ch === '[') depth++;
    else if (ch === ']' && depth > 0) depth--;
    const delim = depth > 0 ? (ch === '"' || /\s/.test(ch)) : TOKEN_DELIMS.has(ch);
    if (delim) {
      if (cur) out.push(cur);
      cur = '';
      if (depth > 0 && /\s|"/.test(ch)) depth = 0; // unbalanced bracket: reset
    } else {
      cur += ch;
    }
  }
  if (cur) out.push(cur);
  return out;
}

// Split on `.` at bracket depth 0, except for a `.` between two digits.
function splitDots(token) {
  const parts = [];
  let cur = '';
  let depth = 0;
  for (let i = 0; i < token.length; i++) {
    const ch = token[i];
    if (ch === '[') depth++;
    else if (ch === ']' && depth > 0) depth--;
    if (ch === '.' && depth === 0 && !(/\d/.test(token[i - 1] || '') && /\d/.test(token[i + 1] || ''))) {
      if (cur) parts.push(cur);
      cur = '';
    } else {
      cur += ch;
    }
  }
  if (cur) parts.push(cur);
  return parts;
}

// Index of the first occurrence of `ch` at bracket depth 0 (or -1).
function indexAtDepth0(token, ch) {
  let depth = 0;
  for (let i = 0; i < token.length; i++) {
    if (token[i] === ch && depth === 0) return i;
    if (token[i] === '[') depth++;
    else if (token[i] === ']' && depth > 0) depth--;
  }
  return -1;
}

function extractRust(content) {
  const found = new Set();
  const add = (t) => {
    t = t.replace(/^[:.]+|[:.]+$/g, '');
    if (t.length > 0 && t.length <= 200 && CLASS_LIKE.test(t)) found.add(t);
  };
  for (const token of tokenize(content)) {
    add(token);
    for (let part of splitDots(token)) {
      add(part);
      // maud id shorthand: `card#main` -> `card`
      const hash = indexAtDepth0(part, '#');
      if (hash > 0) {
        part = part.slice(0, hash);
        add(part);
      }
      // maud class toggle: `active[is_active]` -> `active`
      // (but keep arbitrary values `w-[3rem]` and variants `[&>*]:p-2`)
      const br = part.indexOf('[');
      if (br > 0 && !/[-:]/.test(part[br - 1])) add(part.slice(0, br));
    }
  }
  return Array.from(found).sort();
}

module.exports = {
  content: {
    files: ['./src/**/*.rs'],
    extract: {
      rs: extractRust,
    },
  },
  // The @layer components classes from assets/input.css are always emitted,
  // even before any template references them and when a class name is built at
  // runtime (e.g. format!("badge-{}", status)), which no extractor can see.
  safelist: [
    'btn', 'btn-primary', 'btn-danger', 'btn-secondary',
    'card',
    'badge', 'badge-pending', 'badge-running', 'badge-completed',
    'badge-failed', 'badge-deleted', 'badge-pruned',
    // An org's backup state (platform::orgs, pages::home: `badge-${state}`).
    'badge-stuck', 'badge-failing', 'badge-overdue', 'badge-never', 'badge-ok', 'badge-off',
    // An org's closing (closing::web, platform::orgs).
    'badge-closing', 'badge-closed',
    'input', 'label', 'table-basic', 'table-stack',
    'flash-error', 'flash-ok',
    'progress', 'progress-bar',
  ],
  theme: {
    extend: {
      colors: {
        brand: {
          50: '#eff6ff',
          100: '#dbeafe',
          200: '#bfdbfe',
          300: '#93c5fd',
          400: '#60a5fa',
          500: '#3b82f6',
          600: '#2563eb',
          700: '#1d4ed8',
          800: '#1e40af',
          900: '#1e3a8a',
          950: '#172554',
        },
      },
    },
  },
  plugins: [],
};

// Exposed for ad-hoc testing: node -e "console.log(require('./tailwind.config.js').__extractRust('div.px-4'))"
Object.defineProperty(module.exports, '__extractRust', { value: extractRust, enumerable: false });
