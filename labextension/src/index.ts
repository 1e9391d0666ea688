/**
 * The extension's entry point: the Training sidebar panel and the commands
 * that open a job's logs and live chart in the main area.
 */

import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette, MainAreaWidget } from '@jupyterlab/apputils';
import { LabIcon } from '@jupyterlab/ui-components';
import { Widget } from '@lumino/widgets';

import trainingSvg from '../style/icons/training.svg';
import { ChartWidget } from './chartview';
import { CommandIDs } from './commands';
import { LogsWidget } from './logsview';
import { TrainingModel } from './model';
import { TrainingPanel } from './panel';

/**
 * The icon of the sidebar tab.
 */
export const trainingIcon = new LabIcon({
  name: 'training-manager-lab:training',
  svgstr: trainingSvg
});

/**
 * The id of the sidebar panel, stable so that the layout restorer finds it.
 */
const PANEL_ID = 'training-manager-lab-panel';

/**
 * The sidebar plugin.
 */
const sidebarPlugin: JupyterFrontEndPlugin<void> = {
  id: 'training-manager-lab:sidebar',
  description: 'A Training panel with resources, jobs and registered models.',
  autoStart: true,
  optional: [ILayoutRestorer, ICommandPalette],
  activate: (
    app: JupyterFrontEnd,
    restorer: ILayoutRestorer | null,
    palette: ICommandPalette | null
  ): void => {
    const model = new TrainingModel({
      settings: app.serviceManager.serverSettings
    });
    const panel = new TrainingPanel({ model, commands: app.commands });
    panel.id = PANEL_ID;
    panel.title.icon = trainingIcon;
    panel.title.caption = 'Training';
    app.shell.add(panel, 'left', { rank: 600 });
    if (restorer) {
      restorer.add(panel, PANEL_ID);
    }

    const openTabs = new Map<string, MainAreaWidget<Widget>>();
    const openInMain = (id: string, make: () => Widget): void => {
      let tab = openTabs.get(id);
      if (!tab || tab.isDisposed) {
        const content = make();
        tab = new MainAreaWidget({ content });
        tab.id = content.id;
        tab.title.label = content.title.label;
        tab.title.caption = content.title.caption;
        tab.title.closable = true;
        tab.title.icon = trainingIcon;
        openTabs.set(id, tab);
        tab.disposed.connect(() => openTabs.delete(id));
        app.shell.add(tab, 'main');
      }
      app.shell.activateById(tab.id);
    };

    app.commands.addCommand(CommandIDs.openLogs, {
      label: 'Open Job Logs',
      caption: 'Open the rank logs of a training job',
      execute: args => {
        const jobId = String(args.id ?? '');
        if (!jobId) {
          return;
        }
        openInMain(
          `logs:${jobId}`,
          () =>
            new LogsWidget({
              jobId,
              jobName: args.name ? String(args.name) : undefined,
              rank: typeof args.rank === 'number' ? args.rank : 0,
              settings: app.serviceManager.serverSettings
            })
        );
      }
    });

    app.commands.addCommand(CommandIDs.openChart, {
      label: 'Open Job Chart',
      caption: 'Open the live metric chart of a training job',
      execute: args => {
        const jobId = String(args.id ?? '');
        if (!jobId) {
          return;
        }
        openInMain(
          `chart:${jobId}`,
          () =>
            new ChartWidget({
              jobId,
              jobName: args.name ? String(args.name) : undefined,
              settings: app.serviceManager.serverSettings
            })
        );
      }
    });

    app.commands.addCommand(CommandIDs.openPanel, {
      label: 'Show Training Panel',
      caption: 'Show the Training panel in the left sidebar',
      execute: () => app.shell.activateById(PANEL_ID)
    });
    if (palette) {
      palette.addItem({ command: CommandIDs.openPanel, category: 'Training' });
    }

    // Lets benchmarks/bench_sidebar.py time the panel against JupyterLab's start.
    void app.restored.then(() =>
      performance.mark('training-manager-lab:lab-ready')
    );
    console.info('training-manager-lab: Training panel added');
  }
};

export default [sidebarPlugin];
