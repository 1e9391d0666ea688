/**
 * The body of the "Add tag" dialog: a key and a value field.
 */

import { Dialog } from '@jupyterlab/apputils';
import { Widget } from '@lumino/widgets';

/**
 * A tag as the user typed it.
 */
export interface ITagInput {
  key: string;
  value: string;
}

/**
 * Two labelled text fields whose content the dialog returns.
 */
export class TagForm extends Widget implements Dialog.IBodyWidget<ITagInput> {
  /**
   * Construct the form.
   */
  constructor() {
    super();
    this.addClass('tml-TagForm');
    this._key = this._field('Key', 'stage');
    this._value = this._field('Value', 'production');
  }

  /**
   * The key and value typed so far, trimmed.
   */
  getValue(): ITagInput {
    return { key: this._key.value.trim(), value: this._value.value.trim() };
  }

  private _field(label: string, placeholder: string): HTMLInputElement {
    const wrapper = document.createElement('label');
    wrapper.className = 'tml-TagField';
    const text = document.createElement('span');
    text.textContent = label;
    const input = document.createElement('input');
    input.type = 'text';
    input.placeholder = placeholder;
    input.className = 'jp-mod-styled';
    input.setAttribute('aria-label', `Tag ${label.toLowerCase()}`);
    wrapper.append(text, input);
    this.node.appendChild(wrapper);
    return input;
  }

  private _key: HTMLInputElement;
  private _value: HTMLInputElement;
}
