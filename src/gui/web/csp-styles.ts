/**
 * Run-time styles under the strict Content-Security-Policy (`style-src
 * 'self'`, no 'unsafe-inline', no nonce).
 *
 * xterm.js's DOM renderer writes rules it computes in the page (cell
 * dimensions measured from the font, the theme's colours, the scrollbar) into
 * `<style>` elements it creates, and adds a cell's true colours with
 * `setAttribute('style', …)`. The CSP refuses both. The build
 * (scripts/build-gui.mjs) rewrites those few places in the bundled xterm.js:
 * its style elements become {@link cspStyleElement}, whose text goes into a
 * constructable stylesheet adopted by the document, and cell styles go
 * through the element's CSSOM declaration (`style.cssText`). The CSP does
 * not govern CSSOM, which only this origin's script can reach; markup that
 * carries a style (an injected `<style>` or `style="…"`) is still refused.
 */

/** A stand-in for `document.createElement('style')`: an inert, hidden element whose `textContent` is a stylesheet of the document. */
export function cspStyleElement(doc: Document): HTMLElement {
  const el = doc.createElement('qgui-style');
  el.hidden = true;
  const sheet = new CSSStyleSheet();
  let text = '';
  // xterm.js appends it at once and removes it when the terminal is disposed
  doc.adoptedStyleSheets = [...doc.adoptedStyleSheets, sheet];
  Object.defineProperty(el, 'textContent', {
    configurable: true,
    get: () => text,
    set: (v: unknown) => {
      text = v == null ? '' : String(v);
      sheet.replaceSync(text);
    },
  });
  const remove = el.remove.bind(el);
  Object.defineProperty(el, 'remove', {
    configurable: true,
    value: () => {
      doc.adoptedStyleSheets = doc.adoptedStyleSheets.filter((s) => s !== sheet);
      remove();
    },
  });
  return el;
}
