// Build action.js into semver.wasm, a component of the sluice:action `action` world.
//   npm ci && node build.mjs
import { componentize } from '@bytecodealliance/componentize-js';
import { writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';

const here = dirname(fileURLToPath(import.meta.url));
const { component } = await componentize({
  sourcePath: join(here, 'action.js'),
  witPath: join(here, '..', '..', '..', 'wit'),
  worldName: 'sluice:action/action@0.1.0',
  // The action needs none of these; leaving them out keeps the component's imports minimal.
  disableFeatures: ['http', 'fetch-event'],
});
const out = process.argv[2] ?? join(here, 'semver.wasm');
await writeFile(out, component);
console.log(`wrote ${out} (${component.length} bytes)`);
