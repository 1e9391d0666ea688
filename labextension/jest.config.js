/**
 * Jest runs the unit tests beside the sources through ts-jest. JupyterLab and
 * Lumino ship ES modules, so those packages are transformed too.
 */
const esModules = [
  '@jupyterlab',
  '@lumino',
  '@jupyter',
  'lib0',
  'y-protocols',
  'yjs',
  'nanoid'
].join('|');

module.exports = {
  testEnvironment: 'node',
  testMatch: ['<rootDir>/src/**/__tests__/*.spec.ts'],
  moduleFileExtensions: ['ts', 'tsx', 'js', 'json'],
  transform: {
    '^.+\\.(ts|tsx|js)$': [
      'ts-jest',
      { tsconfig: 'tsconfig.test.json', diagnostics: { warnOnly: false } }
    ]
  },
  transformIgnorePatterns: [`/node_modules/(?!(${esModules})/)`],
  moduleNameMapper: {
    '\\.(css|svg)$': '<rootDir>/src/__tests__/filemock.js'
  }
};
