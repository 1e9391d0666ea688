/**
 * Lets TypeScript import SVG files as strings (the builder's asset loader).
 */
declare module '*.svg' {
  const value: string;
  export default value;
}
