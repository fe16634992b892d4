import { defineConfig, type Plugin } from 'vite';
import preact from '@preact/preset-vite';
import { gzipSync } from 'node:zlib';
import { readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

/** Writes a `.gz` copy beside each built text file the server can send compressed. */
function gzipCopies(): Plugin {
  let outDir = 'dist';
  const walk = (dir: string): string[] =>
    readdirSync(dir).flatMap((f) => {
      const p = join(dir, f);
      return statSync(p).isDirectory() ? walk(p) : [p];
    });
  return {
    name: 'sheaf-gzip-copies',
    apply: 'build',
    configResolved(c) {
      outDir = c.build.outDir;
    },
    closeBundle() {
      for (const f of walk(outDir)) {
        if (!/\.(html|js|css|svg|json|txt)$/.test(f)) continue;
        const body = readFileSync(f);
        if (body.length < 1024) continue;
        const gz = gzipSync(body, { level: 9 });
        if (gz.length < body.length) writeFileSync(`${f}.gz`, gz);
      }
    },
  };
}

// The API server the dev server forwards to (`sheaf server --listen ...`).
const target = process.env.SHEAF_API ?? 'https://127.0.0.1:6443';
const BEARER_PROTOCOL = 'base64url.bearer.authorization.k8s.io.';

export default defineConfig({
  plugins: [preact(), gzipCopies()],
  base: '/',
  build: {
    target: 'es2022',
    outDir: 'dist',
    assetsDir: 'assets',
    sourcemap: false,
    chunkSizeWarningLimit: 600,
  },
  server: {
    port: 5173,
    host: '127.0.0.1',
    proxy: {
      '^/(api|apis|version|openapi)(/|$)': {
        target,
        secure: false,
        changeOrigin: true,
        ws: true,
        configure(proxy) {
          // Browsers cannot set headers on WebSockets: the UI sends its token
          // as a subprotocol (Kubernetes' convention). For servers that only
          // read the Authorization header, copy it there.
          proxy.on('proxyReqWs', (proxyReq, req) => {
            const protocols = String(req.headers['sec-websocket-protocol'] ?? '');
            const bearer = protocols
              .split(',')
              .map((p) => p.trim())
              .find((p) => p.startsWith(BEARER_PROTOCOL));
            if (bearer && !req.headers.authorization) {
              const b64 = bearer.slice(BEARER_PROTOCOL.length).replace(/-/g, '+').replace(/_/g, '/');
              const token = Buffer.from(b64, 'base64').toString('utf8');
              proxyReq.setHeader('Authorization', `Bearer ${token}`);
            }
          });
        },
      },
    },
  },
});
