/**
 * The Training panel of the left sidebar: a connection banner and the
 * Resources, Jobs and Models sections.
 */

import { ReactWidget } from '@jupyterlab/ui-components';
import { CommandRegistry } from '@lumino/commands';
import React, { useEffect, useState } from 'react';

import { JobsSection } from './jobsview';
import { TrainingModel } from './model';
import { ModelsSection } from './modelsview';
import type { ConnectionState } from './poller';
import { ResourcesSection } from './resourcesview';

/**
 * Options of a `TrainingPanel`.
 */
export interface ITrainingPanelOptions {
  /**
   * The model the panel shows.
   */
  model: TrainingModel;

  /**
   * The application's commands, used to open logs and charts.
   */
  commands: CommandRegistry;
}

/**
 * The sidebar widget.
 */
export class TrainingPanel extends ReactWidget {
  /**
   * Construct the panel.
   */
  constructor(options: ITrainingPanelOptions) {
    super();
    this._model = options.model;
    this._commands = options.commands;
    this.addClass('tml-TrainingPanel');
  }

  /**
   * The model the panel shows.
   */
  get model(): TrainingModel {
    return this._model;
  }

  protected render(): JSX.Element {
    return <PanelView model={this._model} commands={this._commands} />;
  }

  private _model: TrainingModel;
  private _commands: CommandRegistry;
}

/**
 * Props of the panel's root component.
 */
interface IPanelViewProps {
  model: TrainingModel;
  commands: CommandRegistry;
}

function PanelView(props: IPanelViewProps): JSX.Element {
  const { model, commands } = props;
  const [, setVersion] = useState(0);
  useEffect(() => markOnce(MARK_FIRST_RENDER), []);
  useEffect(() => {
    if (model.jobs.value !== null) {
      markOnce(MARK_FIRST_DATA);
    }
  });
  useEffect(() => {
    const onChange = (): void => setVersion(version => version + 1);
    model.changed.connect(onChange);
    return () => {
      model.changed.disconnect(onChange);
    };
  }, [model]);

  return (
    <div className="tml-PanelView">
      <header className="tml-PanelHeader">
        <h2 className="tml-PanelTitle">Training</h2>
        <button
          className="tml-IconButton"
          aria-label="Refresh the Training panel"
          title="Refresh"
          onClick={() => void model.refresh()}
        >
          ⟳
        </button>
      </header>
      <ConnectionBanner state={model.state} model={model} />
      {model.state !== 'extension-missing' && (
        <>
          <ResourcesSection resource={model.resources} />
          <JobsSection model={model} commands={commands} />
          <ModelsSection model={model} />
        </>
      )}
    </div>
  );
}

/**
 * Performance marks for benchmarks/bench_sidebar.py: the panel's first render,
 * and its first render with the job list loaded.
 */
const MARK_FIRST_RENDER = 'training-manager-lab:first-render';
const MARK_FIRST_DATA = 'training-manager-lab:first-data';

function markOnce(name: string): void {
  if (
    typeof performance !== 'undefined' &&
    performance.getEntriesByName(name).length === 0
  ) {
    performance.mark(name);
  }
}

/**
 * Props of the connection banner.
 */
interface IConnectionBannerProps {
  state: ConnectionState;
  model: TrainingModel;
}

function ConnectionBanner(props: IConnectionBannerProps): JSX.Element | null {
  const { state, model } = props;
  switch (state) {
    case 'connected':
      return null;
    case 'connecting':
      return (
        <div className="tml-Banner" role="status">
          Connecting to the training manager…
        </div>
      );
    case 'extension-missing':
      return (
        <div className="tml-Banner tml-mod-warning" role="alert">
          The training-manager server extension is not running on this Jupyter
          server, so there is nothing to show. Install the training-manager-lab
          Python package in the environment that runs Jupyter, check that{' '}
          <code>jupyter server extension list</code> shows{' '}
          <code>training_manager_lab</code> enabled, then restart Jupyter.
        </div>
      );
    case 'unreachable':
      return (
        <div className="tml-Banner tml-mod-warning" role="alert">
          The Jupyter server cannot be reached. The panel reconnects by itself
          when the server is back.
        </div>
      );
    default:
      return (
        <div className="tml-Banner tml-mod-error" role="alert">
          The training manager answered with an error:{' '}
          {model.jobs.error?.message ?? 'unknown error'} The panel keeps trying.
        </div>
      );
  }
}
