// An example Sluice action in JavaScript: computes the next semantic version.
//
//   with: { version: "#{Build.Version}", bump: minor }   →   output variable Next = 1.5.0
//
// Exports follow the `action` world of wit/action.wit (names in camelCase): `describe()`
// returns the description record; `run(ctx, config)` returns an `outcome` variant or throws
// an `action-error` variant. Imports are named with the package version.
import { log } from 'sluice:action/log@0.1.0';

export function describe() {
  return {
    name: 'semver-bump',
    version: '1.0.0',
    category: 'other',
    summary: 'Computes the next semantic version (major, minor or patch)',
    config: [
      { name: 'version', required: true, description: 'the current version, MAJOR.MINOR.PATCH', defaultValue: undefined },
      { name: 'bump', required: false, description: 'major, minor or patch', defaultValue: 'patch' },
    ],
    capabilities: [],
    sideEffects: false,
  };
}

export function run(ctx, config) {
  const get = (key) => config.find(([k]) => k === key)?.[1];
  const version = get('version');
  const bump = get('bump') ?? 'patch';
  const parts = /^(\d+)\.(\d+)\.(\d+)$/.exec(version ?? '');
  if (!parts) {
    throw { tag: 'config', val: `\`version\` must be MAJOR.MINOR.PATCH, got ${JSON.stringify(version)}` };
  }
  let [major, minor, patch] = parts.slice(1).map(Number);
  switch (bump) {
    case 'major': major += 1; minor = 0; patch = 0; break;
    case 'minor': minor += 1; patch = 0; break;
    case 'patch': patch += 1; break;
    default: throw { tag: 'config', val: `\`bump\` must be major, minor or patch, got ${JSON.stringify(bump)}` };
  }
  const next = `${major}.${minor}.${patch}`;
  log('info', `${ctx.pipeline}/${ctx.stage}/${ctx.action}: ${version} -> ${next}`, [['bump', bump]]);
  return { tag: 'succeeded', val: { variables: [['Next', next], ['Previous', version]], summary: `${version} → ${next} (${bump})` } };
}
