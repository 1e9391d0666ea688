/**
 * The ids of the commands the extension registers.
 */

/**
 * Command ids, namespaced by the npm package name.
 */
export namespace CommandIDs {
  /**
   * Open the rank logs of a job in a main-area tab; args `{id, name?, rank?}`.
   */
  export const openLogs = 'training-manager-lab:open-logs';

  /**
   * Open the live chart of a job in a main-area tab; args `{id, name?}`.
   */
  export const openChart = 'training-manager-lab:open-chart';

  /**
   * Reveal the Training panel in the left sidebar.
   */
  export const openPanel = 'training-manager-lab:open-panel';
}
