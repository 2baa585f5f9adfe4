// Regenerates schema/kvtc-profile.schema.json from the zod schema (npm run schema).
import { writeFileSync } from 'node:fs';
import { manifestJsonSchema } from '../src/profile/schema.js';

writeFileSync(new URL('../schema/kvtc-profile.schema.json', import.meta.url), `${JSON.stringify(manifestJsonSchema(), null, 2)}\n`);
